"""Typed errors of the ledger layer: signatures, Merkle proofs, the contract and the devnet.

Kept free of fedproof imports (ledger depends on third parties only). Every message says what failed and
what a user can do about it.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of the ledger layer's deliberate errors."""
