"""Typed errors of the privacy layer, under fedproof's one root (``fedproof.base.errors.FedproofError``)."""

from __future__ import annotations

from fedproof.base.errors import FedproofError


class PrivacyError(FedproofError):
    """Base class of the privacy layer's deliberate errors."""


class DPConfigError(PrivacyError, ValueError):
    """A differential-privacy setting is out of range or cannot be honoured for this data or model."""


class BudgetExhausted(PrivacyError):
    """One more round of training would spend more privacy than the client's budget allows."""

    def __init__(self, spent: float, projected: float, target: float) -> None:
        super().__init__(
            f"privacy budget exhausted: epsilon spent {spent:.4f}, one more round would reach "
            f"{projected:.4f} > target {target:g}"
        )
        self.spent, self.projected, self.target = spent, projected, target


class HEError(PrivacyError):
    """Base class of homomorphic-encryption errors: bad keys, parameters or ciphertexts."""


class ContextError(HEError, ValueError):
    """CKKS parameters or key material (a key share, a joint key, the key ceremony) are malformed or refused."""


class CiphertextError(HEError, ValueError):
    """A ciphertext is truncated, corrupt, oversized, or does not match the context's parameters."""


class PlaintextRangeError(HEError, ValueError):
    """Values to encrypt are not finite or exceed the range the CKKS parameters can sum without overflow."""
