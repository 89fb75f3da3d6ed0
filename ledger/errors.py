"""Typed errors of the ledger layer: signatures, Merkle proofs, the contract and the devnet.

Kept free of fedproof imports (ledger depends on third parties only). Every message says what failed and
what a user can do about it.
"""

from __future__ import annotations

from fedproof.base.errors import FedproofError, Reason


class LedgerError(FedproofError):
    """Base class of the ledger layer's deliberate errors."""


class KeyFileError(LedgerError, ValueError):
    """A signing key or allow-list file is missing, oversized or not what it should be."""


class UpdateVerificationError(LedgerError):
    """An update (or a key holder's statement) failed verification; it never reaches the aggregate."""

    reason = Reason.MALFORMED


class BadSignature(UpdateVerificationError):
    """The signature does not match the signed fields under the client's registered key (forged or altered)."""

    reason = Reason.BAD_SIGNATURE


class UnknownClient(UpdateVerificationError):
    """The sender is not on the server's allow-list."""

    reason = Reason.UNKNOWN_CLIENT


class RevokedClient(UpdateVerificationError):
    """The sender's key was revoked."""

    reason = Reason.REVOKED_CLIENT


class ReplayedUpdate(UpdateVerificationError):
    """The update was signed for another chain, contract, run or round."""

    reason = Reason.REPLAYED


class WrongParent(UpdateVerificationError):
    """The update was trained from another model than the round's parent (the server sent clients different
    models, or the update belongs to another round)."""

    reason = Reason.WRONG_PARENT


class DuplicateUpdate(UpdateVerificationError):
    """A second update from the same client in one round."""

    reason = Reason.DUPLICATE


class PayloadMismatch(UpdateVerificationError):
    """The payload's bytes do not hash to what the client signed."""

    reason = Reason.PAYLOAD_MISMATCH


class MerkleProofError(LedgerError):
    """A Merkle proof does not lead from its leaf to the expected root."""


# ---- the contract, its artifact and the devnet (ledger/contract.py, ledger/artifact.py; the devnet process is ledger/devnet.py)


class LedgerValueError(LedgerError, ValueError):
    """A value handed to the ledger has the wrong shape (a hash that is not 32 bytes, a negative round...)."""


class LedgerArtifactError(LedgerError):
    """The committed compiled contract (contracts/build/FedproofLedger.json) is missing or damaged."""


class LedgerUnavailable(LedgerError):
    """No Ethereum node answers at the ledger URL (never started, stopped, or gone in the middle of a run)."""


class ContractNotFound(LedgerError):
    """There is no contract code at the given address on this chain."""


class ContractMismatch(ContractNotFound):
    """The code at the given address is not this build of FedproofLedger."""


class LedgerTxFailed(LedgerError):
    """A ledger transaction reverted without a reason fedproof knows, ran out of gas, or was not mined in time."""


class ContractRevert(LedgerTxFailed):
    """The contract refused a call with one of its custom errors; nothing was written.

    ``error`` is the Solidity error's name and ``arguments`` its decoded arguments (name -> value).
    """

    error = ""

    def __init__(self, message: str, arguments: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.arguments = dict(arguments or {})


class NotOwner(ContractRevert):
    """The sending account is not the contract's owner (the coordinator that deployed it)."""

    error = "NotOwner"


class ClientAlreadyRegistered(ContractRevert):
    """The client id already has a key on chain (keys are set once, even after revocation)."""

    error = "AlreadyRegistered"


class UnknownClientOnChain(ContractRevert):
    """The client id was never registered on chain."""

    error = "UnknownClient"


class RoundOutOfOrder(ContractRevert):
    """The round is not the run's latest recorded round + 1 (a duplicate, a gap or a rewind)."""

    error = "RoundOutOfOrder"


class ParentMismatch(ContractRevert):
    """The round's parent model hash is not the model hash recorded for the previous round."""

    error = "ParentMismatch"


class RunNotStarted(ContractRevert):
    """A round of a run whose initial model was never registered (``startRun``)."""

    error = "RunNotStarted"


class RunAlreadyStarted(ContractRevert):
    """``startRun`` for a run that already has an initial model."""

    error = "RunAlreadyStarted"


class UnknownModelOnChain(ContractRevert):
    """No recorded round of that run has that model hash, so a deployment of it cannot be recorded."""

    error = "UnknownModel"


class ZeroHashRejected(ContractRevert):
    """A public key or model hash of 32 zero bytes was given; zero means "absent" on chain."""

    error = "ZeroHash"


class BadKeyStatementOnChain(ContractRevert):
    """``recordKey`` without a statement, or with signatures that are not 64 bytes each."""

    error = "BadKeyStatement"


class DevnetError(LedgerError):
    """The local anvil devnet cannot be started, stopped or read."""


class AnvilNotFound(DevnetError):
    """No anvil binary was found ($FEDPROOF_ANVIL, contracts/node_modules, PATH)."""


class DevnetPortInUse(DevnetError):
    """Something other than this data directory's devnet holds the port."""


class DevnetStartFailed(DevnetError):
    """anvil exited or did not answer in time after being started."""


class DevnetStateCorrupt(DevnetError):
    """The devnet's saved chain (chain.json) is not readable JSON, so anvil would refuse to load it."""
