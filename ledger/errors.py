"""Typed errors of the ledger layer: signatures, Merkle proofs, the contract and the devnet.

Kept free of fedproof imports (ledger depends on third parties only). Every message says what failed and
what a user can do about it.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of the ledger layer's deliberate errors."""


class KeyFileError(LedgerError, ValueError):
    """A signing key or allow-list file is missing, oversized or not what it should be."""


class UpdateVerificationError(LedgerError):
    """An update (or a committee reply) failed verification; it never reaches the aggregate."""

    reason = "invalid"


class BadSignature(UpdateVerificationError):
    """The signature does not match the signed fields under the client's registered key (forged or altered)."""

    reason = "bad-signature"


class UnknownClient(UpdateVerificationError):
    """The sender is not on the server's allow-list."""

    reason = "unknown-client"


class RevokedClient(UpdateVerificationError):
    """The sender's key was revoked."""

    reason = "revoked-client"


class ReplayedUpdate(UpdateVerificationError):
    """The update was signed for another chain, contract, run or round."""

    reason = "replayed"


class DuplicateUpdate(UpdateVerificationError):
    """A second update from the same client in one round."""

    reason = "duplicate"


class PayloadMismatch(UpdateVerificationError):
    """The payload's bytes do not hash to what the client signed."""

    reason = "payload-mismatch"


class MerkleProofError(LedgerError):
    """A Merkle proof does not lead from its leaf to the expected root."""
