"""What every step of a client's part in threshold HE shares: the scheme's parameters, the names of what it keeps in
``Context.state``, the refusal it answers with, and the key it holds once the ceremony is confirmed."""

from __future__ import annotations


from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from fedproof.base.errors import FedproofError, Reason, UpdateRejected
from ledger.key_statement import KeyStatement
from privacy.errors import PrivacyError
from privacy.keygen import KeyHolding
from privacy.threshold import JointPublicKey, ThresholdParams


PARAMS = ThresholdParams()
CEREMONY_STATE, DEAL_ARRAYS = "fedproof.ceremony", "fedproof.ceremony-deal"
PENDING_ARRAYS, PENDING_STATE = "fedproof.pending-key", "fedproof.pending-threshold"
"""A key this device computed and signed, not yet confirmed: it encrypts and decrypts under a key only once
every holder signed the same statement (a complaint by anyone, or a missing signature, leaves it unused)."""
KEY_ARRAYS, KEY_STATE = "fedproof.threshold-key", "fedproof.threshold"
UPLOAD_STATE = "fedproof.upload"
"""The ciphertexts this device committed to in its latest train reply, until it reveals them."""
VERIFIED_SUM, VERIFIED_C0 = "fedproof.verified-sum", "fedproof.verified-sum-c0"
"""The sum this device last checked and helped decrypt (what the leaves said, and the re-randomized sum's c0): a
co-signing request from the same decryption may then omit the leaves, and the device uses what it verified."""
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


def _keep(context: Context, holding: KeyHolding, statement: KeyStatement, arrays_key: str, state_key: str) -> None:
    p0, a = holding.public_key.to_arrays()
    context.state[arrays_key] = ArrayRecord({"p0": Array(p0), "a": Array(a), "share": Array(holding.share)})
    context.state[state_key] = ConfigRecord({"party": holding.party, "statement": statement.to_bytes()})


def key_statement(context: Context) -> KeyStatement:
    meta = context.state.config_records.get(KEY_STATE)
    if meta is None:
        raise PrivacyError("this device holds no confirmed share of the run's threshold key (the key ceremony did "
                           "not complete with it, or not every holder signed the key)")
    return KeyStatement.from_bytes(meta["statement"])  # type: ignore[arg-type]


def key_holding(context: Context) -> KeyHolding:
    statement = key_statement(context)
    arrays, meta = context.state.array_records.get(KEY_ARRAYS), context.state.config_records[KEY_STATE]
    if arrays is None:
        raise PrivacyError("this device's key share is missing from its state")
    a = arrays["a"].numpy()
    pk = JointPublicKey(PARAMS, arrays["p0"].numpy(), [a[0], a[1]])
    if pk.digest != statement.public_key_sha256:
        raise PrivacyError("this device's stored key does not match its key statement")
    return KeyHolding(str(meta["party"]), statement.points, statement.threshold, pk, arrays["share"].numpy())
