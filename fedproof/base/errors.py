"""The typed errors fedproof raises on purpose.

Every error a user can cause (bad configuration, missing or corrupt data, ...) is a subclass of
:class:`FedproofError`, so a caller can catch the whole family in one place and the CLI can print the
message without a traceback. Messages say what is wrong and what to do about it.
"""

from __future__ import annotations

from enum import Enum


class FedproofError(Exception):
    """Base class of every error fedproof raises deliberately (the ledger's and the privacy layer's too)."""


class Reason(str, Enum):
    """Every refusal's code, one vocabulary: why a reply was set aside (the label metrics, bundles and Prometheus
    count it under), why a client declined, why a key holder refused."""

    NO_REPLY = "no-reply"
    CLIENT_ERROR = "client-error"
    UNEXPECTED_SENDER = "unexpected-sender"
    MALFORMED = "malformed"
    WRONG_MODE = "wrong-mode"
    WRONG_SHAPE = "wrong-shape"
    WRONG_DTYPE = "wrong-dtype"
    NON_FINITE = "non-finite"
    OVER_NORM = "over-norm"
    BAD_EXAMPLE_COUNT = "bad-example-count"
    CORRUPT_CIPHERTEXT = "corrupt-ciphertext"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_CLIENT = "unknown-client"
    REVOKED_CLIENT = "revoked-client"
    REPLAYED = "replayed"
    WRONG_PARENT = "wrong-parent"
    DUPLICATE = "duplicate"
    PAYLOAD_MISMATCH = "payload-mismatch"
    WITHHELD = "withheld"
    """An evaluate reply without metrics, on purpose: the client's privacy keeps them on the device."""
    REFUSED = "refused"
    """A key holder refused to help decrypt: the request failed one of its checks (the detail names which)."""
    # a device's privacy policy, refusing what a run asks (privacy.policy.PrivacyPolicy.admit)
    HE_REQUIRED = "he-required"
    DP_REQUIRED = "dp-required"
    EPSILON_ABOVE_POLICY = "epsilon-above-policy"
    DELTA_ABOVE_POLICY = "delta-above-policy"
    CLIP_OUTSIDE_POLICY = "clip-outside-policy"
    NOISE_BELOW_POLICY = "noise-below-policy"
    # a key holder refusing a decryption or co-signing request (fl_client.threshold: the check it failed)
    BAD_CIPHERTEXT = "bad-ciphertext"
    BAD_DECRYPTORS = "bad-decryptors"
    BAD_LEAF = "bad-leaf"
    BAD_PARTIAL = "bad-partial"
    BAD_WEIGHTS = "bad-weights"
    KEY_EXHAUSTED = "key-exhausted"
    MIXED_PARENTS = "mixed-parents"
    MODEL_MISMATCH = "model-mismatch"
    NO_KEY = "no-key"
    NOT_COMMITTED = "not-committed"
    NOT_IN_SET = "not-in-set"
    NOTHING_COMMITTED = "nothing-committed"
    OUT_OF_RANGE = "out-of-range"
    SECOND_SET = "second-set"
    SECOND_SUM = "second-sum"
    SUM_MISMATCH = "sum-mismatch"
    TOO_FEW_CONTRIBUTORS = "too-few-contributors"
    TOO_MANY_LEAVES = "too-many-leaves"
    TOO_MANY_REPEATS = "too-many-repeats"
    UNKNOWN_SUM = "unknown-sum"
    UNREVEALED = "unrevealed"

    @classmethod
    def of(cls, exc: Exception) -> Reason:
        """The code a typed error carries (``reason``); an error without one is MALFORMED input. A code outside this
        vocabulary is a bug, and raises rather than being counted as something else."""
        code = getattr(exc, "reason", None)
        return cls.MALFORMED if code is None else cls(code)


class ConfigError(FedproofError, ValueError):
    """A setting is unknown, of the wrong type or out of range."""


class DataError(FedproofError):
    """Training or test data could not be used."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """None of the places searched holds the dataset's files."""


class DataIntegrityError(DataError):
    """A data file exists but is corrupt: bad header, truncated, oversized or wrong checksum."""


class PartitionError(DataError):
    """A partitioning would not assign every training sample to exactly one client."""


class ClientsUnavailableError(FedproofError):
    """Fewer clients connected than the run expects, within the time allowed."""


class UpdateRejected(FedproofError):
    """A client's reply was refused before aggregation (malformed, corrupt, or out of range); the round goes on.

    ``reason`` is the code it is counted under.
    """

    def __init__(self, message: str, reason: Reason = Reason.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


