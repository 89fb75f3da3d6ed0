"""What every step of a client's part in threshold HE shares: the scheme's parameters, the refusal it answers with, and the key it holds once the ceremony is confirmed."""

from __future__ import annotations


from flwr.app import ArrayRecord, ConfigRecord, Context

from fedproof.base.errors import FedproofError, Reason, UpdateRejected
from ledger.key_statement import KeyStatement
from privacy.errors import PrivacyError
from privacy.keygen import KeyHolding
from privacy.threshold import ThresholdParams
from fl_client.threshold.state import HeldKey, JoinedKey
from privacy.threshold import JointPublicKey


PARAMS = ThresholdParams()
MAX_REPEATS = 3
MAX_WEIGHT_SCALE = 2**40
"""Largest weight scale W a device signs: sums of up to a trillion examples (W only divides what is encrypted)."""


class DecryptionRefused(FedproofError):
    """A key holder refuses a decryption or co-signing request: the check it failed is its ``reason``."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.code = reason.value


def _config(record: ConfigRecord, key: str, kind: type):
    value = record.get(key)
    if type(value) is not kind:
        raise UpdateRejected(f"key-ceremony message: {key!r} must be {kind.__name__}")
    return value


def _current(context: Context) -> HeldKey | JoinedKey | None:
    """The key this device encrypts under: of the share it holds and the key it joined as a contributor, the one
    for the later rounds (a committee is drawn again when it must be replaced)."""
    keys = [k for k in (HeldKey.recall(context), JoinedKey.recall(context)) if k is not None]
    return max(keys, key=lambda k: k.key_statement().first_round, default=None)


def key_statement(context: Context) -> KeyStatement:
    """The statement of the key this device uses: the one it holds a share of, or the one it joined to encrypt."""
    current = _current(context)
    if current is None:
        raise PrivacyError("this device holds no confirmed share or joined copy of the run's threshold key (the key ceremony or the key's "
                           "join did not complete with it, or not every holder signed the key)")
    return current.key_statement()


def held_key_statement(context: Context) -> KeyStatement:
    """The statement of the key this device holds a share of (what it decrypts and co-signs under)."""
    held = HeldKey.recall(context)
    if held is None:
        raise PrivacyError("this device holds no confirmed share of the run's threshold key")
    return held.key_statement()


def public_key(context: Context, sent: ArrayRecord | None = None) -> JointPublicKey:
    """The joint public key to encrypt under: a holder's own, or, for a contributor, ``sent`` (the train message's
    copy of p0) once it matches the statement every holder signed."""
    current = _current(context)
    if current is None:
        raise PrivacyError("this device holds no confirmed share or joined copy of the run's threshold key")
    try:
        if isinstance(current, HeldKey):
            return current.holding(PARAMS).public_key
        if sent is None or "p0" not in sent:
            raise ValueError("the train message carries no public key to encrypt under")
        return current.public_key(PARAMS, sent["p0"].numpy())
    except (ValueError, TypeError) as exc:
        raise PrivacyError(str(exc)) from exc


def key_holding(context: Context) -> KeyHolding:
    held = HeldKey.recall(context)
    if held is None:
        raise PrivacyError("this device holds no confirmed share of the run's threshold key")
    try:
        return held.holding(PARAMS)
    except ValueError as exc:
        raise PrivacyError(str(exc)) from exc
