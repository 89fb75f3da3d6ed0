"""The typed errors fedproof raises on purpose.

Every error a user can cause (bad configuration, missing or corrupt data, ...) is a subclass of
:class:`FedproofError`, so a caller can catch the whole family in one place and the CLI can print the
message without a traceback. Messages say what is wrong and what to do about it.
"""

from __future__ import annotations


class FedproofError(Exception):
    """Base class of every error fedproof raises deliberately."""


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

    ``reason`` is the short code it is counted under (a :class:`fedproof.core.replies.Reason` value).
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class AggregationError(FedproofError):
    """A round produced no new model: its aggregate could not be formed or decrypted; the model is unchanged."""
