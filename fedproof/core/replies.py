"""Reading replies: one decoder per reply kind, and the only place a reply's structure is trusted or refused.

A reply from a client is outside input. Each decoder turns one Flower ``Message`` into a plain value or a
:class:`Rejection` carrying a :class:`Reason` code; it never raises and never lets anything malformed
through:

* :func:`decode_train_reply` -> :class:`Update` | :class:`Declined` | :class:`Rejection`. An update has the
  global model's exact keys, shapes and dtypes (plaintext), or exactly the ciphertexts its length needs
  (HE); finite values within the per-parameter bound; a positive example count; a client report; and a
  signature envelope (whether the signature is *valid* is the admission gate's question, which needs the
  allow-list).
* :func:`decode_evaluate_reply` -> :class:`Evaluation` | :class:`Rejection`.
* :func:`decode_partial_reply` -> :class:`PartialDecryption` | :class:`Rejection`, and
  :func:`decode_cosign_reply` -> :class:`ModelCosignature` | :class:`Rejection` (threshold HE's key holders).

Checks run cheapest and most specific first, so a stock Flower client that sends NaN weights is refused as
``non-finite`` rather than merely ``unsigned``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedproof.base.records import get_record, need_record
from fedproof.base.errors import Reason, UpdateRejected
from fedproof.core.weights import flatten
from fedproof.core.protocol import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    CIPHERTEXTS_KEY,
    HEADER_KEY,
    POLICY_REFUSED,
    NOT_SAMPLED,
    SAMPLED,
    REFUSED,
    WITHHELD,
    PARTIAL_KEY,
    DECRYPTION_KEY,
    COSIGN_KEY,
    METRICS_KEY,
    ClientReport,
    EncryptedPayload,
    SignedEnvelope,
    payload_chunks,
)
from ledger.signing import payload_digest, unscale_epsilon
from privacy.threshold import ThresholdParams

MAX_EXAMPLES = 2**31 - 1
"""Largest example count a reply may claim (the signed field is a u64; sums must stay exact in float64)."""
NPY_HEADER_ALLOWANCE = 4096
"""Bytes an ``.npy`` header may add to an array's payload before the array is refused as oversized."""
T = TypeVar("T")


@dataclass(frozen=True)
class Rejection:
    """A reply set aside, and why. ``client_id`` is what the reply claimed, or ``node-<id>`` if nothing."""

    node_id: int
    client_id: str
    reason: Reason
    detail: str
    phase: str = "train"
    """Which exchange the reply answered: train, evaluate, decrypt or cosign."""

    def __str__(self) -> str:
        return f"{self.reason.value}: client {self.client_id} (node {self.node_id}): {self.detail}"


@dataclass(frozen=True)
class Declined:
    """A client that chose not to train this round: its privacy budget would be exceeded, or the run asks for less
    privacy than its policy allows. Its ``epsilon`` is what it says, unsigned: never reported as privacy spent."""

    node_id: int
    client_id: str
    epsilon: float | None
    reason: str
    status: str = BUDGET_EXHAUSTED
    """BUDGET_EXHAUSTED, POLICY_REFUSED (the run asked for less privacy than the client's policy allows), or
    NOT_SAMPLED (user-level DP: the device's own coin said it sits this round out)."""
    next_round: int = 0
    """User-level DP: the round the device says it takes part in next (0: none in this run); unsigned, a hint."""


@dataclass(frozen=True)
class Update:
    """A well-formed train reply: exactly one of ``delta`` (plaintext) or ``ciphertexts`` (HE) is set."""

    node_id: int
    client_id: str
    num_examples: int
    epsilon: float | None
    """The privacy spent as the client signed it (never the unsigned report): the one epsilon reported."""
    envelope: SignedEnvelope
    payload_sha256: bytes
    """SHA-256 of the payload bytes as received (what the signature must cover)."""
    delta: np.ndarray | None
    """Plaintext: the trained weights minus the global model, flat float64."""
    ciphertexts: EncryptedPayload | None
    """HE: the encrypted ``num_examples * delta``."""
    upload_bytes: int
    train_loss: float | None = None
    train_seconds: float | None = None
    secure_seconds: float | None = None
    next_round: int = 0
    """User-level DP: the round the device says it takes part in next (0: none in this run); unsigned, a hint."""


@dataclass(frozen=True)
class Evaluation:
    node_id: int
    loss: float
    accuracy: float
    num_examples: int


@dataclass(frozen=True)
class PartialDecryption:
    """A key holder's flooded partial decryption of a round's sum, and what it says it decrypted."""

    node_id: int
    values: np.ndarray
    """(ciphertexts, N) uint64 residues."""
    sum_sha256: bytes
    merkle_root: bytes
    envelope: SignedEnvelope


@dataclass(frozen=True)
class ModelSpec:
    """What an update must look like: the global model's layout and weights, and the HE scheme if any."""

    layout: tuple[tuple[str, tuple[int, ...], str], ...]
    """(key, shape, dtype) of every array, in the model's order."""
    weights: np.ndarray
    """The global model, flat float64 (the parent every delta is taken from)."""
    max_abs_delta: float
    """Largest |update - global| per parameter a client may send."""
    he: ThresholdParams | None = None
    extra: int = 0
    """Values an encrypted update carries after the model's (adaptive clipping's unclipped bit)."""

    @classmethod
    def of(cls, arrays: ArrayRecord, max_abs_delta: float, he: ThresholdParams | None = None, extra: int = 0
           ) -> ModelSpec:
        ndarrays = arrays.to_numpy_ndarrays()
        layout = tuple((k, tuple(a.shape), a.dtype.str) for k, a in zip(arrays.keys(), ndarrays))
        return cls(layout, flatten(arrays), max_abs_delta, he, extra)

    @property
    def num_values(self) -> int:
        return int(self.weights.size)

    @property
    def encrypted_values(self) -> int:
        """What an encrypted update holds: the model's values, then ``extra``."""
        return self.num_values + self.extra


def decode_train_reply(msg: Message, spec: ModelSpec) -> Update | Declined | Rejection:
    """A train reply as a plain value; every structural check is here (signatures: the admission gate)."""
    return _guarded(msg, "train", lambda: _train(msg, spec))


def decode_check_in_reply(msg: Message) -> int | Declined | Rejection:
    """A user-level DP check-in: the node, when its device takes part; its decline; or a rejection."""
    return _guarded(msg, "train", lambda: _check_in(msg))


def _check_in(msg: Message) -> int | Declined:
    report = ClientReport.from_reply(msg.content)
    if report is None:
        raise UpdateRejected("a check-in reply carries no client report", Reason.MALFORMED)
    if report.status == SAMPLED:
        return msg.metadata.src_node_id
    if report.status in (BUDGET_EXHAUSTED, POLICY_REFUSED, NOT_SAMPLED):
        return Declined(msg.metadata.src_node_id, report.client_id, report.epsilon, report.reason, report.status,
                        report.next_round)
    raise UpdateRejected(f"client {report.client_id} answered a check-in with {report.status!r}", Reason.MALFORMED)


def decode_evaluate_reply(msg: Message) -> Evaluation | Rejection:
    """An evaluate reply: finite ``val_loss`` >= 0, ``val_accuracy`` in [0, 1] and a positive example count."""
    return _guarded(msg, "evaluate", lambda: _evaluation(msg))


@dataclass(frozen=True)
class Revealed:
    """A contributor's revealed ciphertexts and its signature over the frozen set it revealed them to."""

    node_id: int
    payload: EncryptedPayload
    envelope: SignedEnvelope


def decode_reveal_reply(msg: Message, spec: ModelSpec) -> Revealed | Rejection:
    """The ciphertexts a contributor committed to (as many as the model needs, each no larger than a ciphertext)
    and its signed reveal, or its refusal."""
    return _guarded(msg, "reveal", lambda: _revealed(msg, spec))


def _revealed(msg: Message, spec: ModelSpec) -> Revealed:
    report = ClientReport.from_reply(msg.content)
    if report is not None and report.status == REFUSED:
        raise UpdateRejected(f"client {report.client_id} refused: {report.reason}", Reason.REFUSED)
    return Revealed(msg.metadata.src_node_id, _ciphertexts(msg.content, spec), SignedEnvelope.take(msg.content))


def decode_partial_reply(msg: Message, shape: tuple[int, int]) -> PartialDecryption | Rejection:
    """A key holder's partial decryption (``shape`` uint64 residues, a signature envelope), or its refusal."""
    return _guarded(msg, "decrypt", lambda: _partial(msg, shape))


@dataclass(frozen=True)
class ModelCosignature:
    """A key holder's signature of the round's model statement, and the model hash it says it computed."""

    node_id: int
    model_sha256: bytes
    envelope: SignedEnvelope


def decode_cosign_reply(msg: Message) -> ModelCosignature | Rejection:
    """A key holder's co-signature of the round's new model, or its refusal."""
    return _guarded(msg, "cosign", lambda: _cosign(msg))


def _cosign(msg: Message) -> ModelCosignature:
    report = ClientReport.from_reply(msg.content)
    if report is not None and report.status == REFUSED:
        raise UpdateRejected(f"client {report.client_id} refused: {report.reason}", Reason.REFUSED)
    record = get_record(msg.content, COSIGN_KEY, ConfigRecord)
    digest = record.get("model-sha256") if record is not None else None
    if type(digest) is not bytes or len(digest) != 32:
        raise UpdateRejected("the reply carries no model co-signature")
    return ModelCosignature(msg.metadata.src_node_id, digest, SignedEnvelope.take(msg.content))


def _guarded(msg: Message, phase: str, read: Callable[[], T]) -> T | Rejection:
    """``read()``, with an error reply, a typed refusal or anything else the bytes trip turned into a Rejection."""
    node = msg.metadata.src_node_id
    if msg.has_error():
        return Rejection(node, f"node-{node}", Reason.CLIENT_ERROR, f"error {msg.error.code}: {msg.error.reason}",
                         phase)
    try:
        return read()
    except UpdateRejected as exc:
        return Rejection(node, _claimed(msg), Reason.of(exc), str(exc), phase)
    except Exception as exc:  # noqa: BLE001 - outside input: whatever else it trips is still a rejection
        return Rejection(node, _claimed(msg), Reason.MALFORMED, f"unreadable reply ({type(exc).__name__}: {exc})",
                         phase)


def _claimed(msg: Message) -> str:
    """Who the reply says it is from (unverified: for the log and the bundle), or ``node-<id>``."""
    try:
        report = ClientReport.from_reply(msg.content)
    except Exception:  # noqa: BLE001
        report = None
    return report.client_id if report is not None else f"node-{msg.metadata.src_node_id}"


def _train(msg: Message, spec: ModelSpec) -> Update | Declined:
    node, content = msg.metadata.src_node_id, msg.content
    report = ClientReport.from_reply(content)
    if report is not None and report.status in (BUDGET_EXHAUSTED, POLICY_REFUSED, NOT_SAMPLED):
        return Declined(node, report.client_id, report.epsilon, report.reason, report.status, report.next_round)
    count = _num_examples(get_record(content, METRICS_KEY, MetricRecord))
    if spec.he is not None:  # a commitment only: the ciphertexts come once the round's commitments are frozen
        _commitment(content, spec)
        payload, delta, size = None, None, 0
        envelope = SignedEnvelope.take(content)
        digest = envelope.fields.payload_sha256
    else:
        payload, (delta, size) = None, _plain_delta(content, spec)
        digest = payload_digest(payload_chunks(content))
        envelope = SignedEnvelope.take(content)
    if report is None:  # signed, yet no report: not something a fedproof client sends
        raise UpdateRejected("the reply carries no client report", Reason.MALFORMED)
    metrics = need_record(content, METRICS_KEY, MetricRecord)
    return Update(
        node_id=node, client_id=report.client_id, num_examples=count,
        epsilon=unscale_epsilon(envelope.fields.epsilon_scaled), envelope=envelope,
        payload_sha256=digest, delta=delta, ciphertexts=payload, upload_bytes=size,
        train_loss=_finite(metrics, "train_loss"), train_seconds=_finite(metrics, "train-seconds"),
        secure_seconds=_finite(metrics, "secure-seconds"), next_round=report.next_round,
    )


def _evaluation(msg: Message) -> Evaluation:
    report = ClientReport.from_reply(msg.content)
    if report is not None and report.status == WITHHELD:
        raise UpdateRejected(f"client {report.client_id} releases no metrics: {report.reason}", Reason.WITHHELD)
    metrics = get_record(msg.content, METRICS_KEY, MetricRecord)
    count = _num_examples(metrics)
    loss, accuracy = _finite(metrics, "val_loss"), _finite(metrics, "val_accuracy")
    if loss is None or accuracy is None or loss < 0 or not 0 <= accuracy <= 1:
        raise UpdateRejected("evaluate metrics need a finite val_loss >= 0 and a val_accuracy in [0, 1]")
    return Evaluation(msg.metadata.src_node_id, loss, accuracy, count)


def _partial(msg: Message, shape: tuple[int, int]) -> PartialDecryption:
    report = ClientReport.from_reply(msg.content)
    if report is not None and report.status == REFUSED:
        raise UpdateRejected(f"client {report.client_id} refused: {report.reason}", Reason.REFUSED)
    record = get_record(msg.content, PARTIAL_KEY, ArrayRecord)
    meta = get_record(msg.content, DECRYPTION_KEY, ConfigRecord)
    if record is None or list(record.keys()) != [PARTIAL_KEY] or meta is None:
        raise UpdateRejected("the reply carries no partial decryption")
    values = _array(record[PARTIAL_KEY], shape, np.dtype(np.uint64).str)
    digest, root = meta.get("sum-sha256"), meta.get("merkle-root")
    if type(digest) is not bytes or type(root) is not bytes:
        raise UpdateRejected("the partial decryption does not say what it decrypted")
    return PartialDecryption(msg.metadata.src_node_id, values, digest, root, SignedEnvelope.take(msg.content))


# ----------------------------------------------------------------------------------------- the checks


def _num_examples(metrics: MetricRecord | None) -> int:
    count = metrics.get("num-examples") if metrics is not None else None
    if type(count) is not int or not 1 <= count <= MAX_EXAMPLES:
        raise UpdateRejected(f"num-examples must be an integer in 1..{MAX_EXAMPLES}", Reason.BAD_EXAMPLE_COUNT)
    return count


def _finite(metrics: MetricRecord | None, key: str) -> float | None:
    """An optional scalar metric: a finite number, or None (a reported value that is not one is refused)."""
    value = metrics.get(key) if metrics is not None else None
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise UpdateRejected(f"metric {key} must be a finite number", Reason.NON_FINITE)
    return float(value)


def _array(array, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """An ``Array`` as numpy, refused unless it is exactly ``shape`` and ``dtype`` (size checked before parsing)."""
    if array.stype != "numpy.ndarray" or array.dtype != np.dtype(dtype).name:
        raise UpdateRejected(f"array of dtype {array.dtype!r} ({array.stype}), expected {np.dtype(dtype).name}",
                             Reason.WRONG_DTYPE)
    if tuple(array.shape) != shape:
        raise UpdateRejected(f"array of shape {tuple(array.shape)}, expected {shape}", Reason.WRONG_SHAPE)
    if len(array.data) > int(np.prod(shape)) * np.dtype(dtype).itemsize + NPY_HEADER_ALLOWANCE:
        raise UpdateRejected(f"array of {len(array.data)} bytes is larger than its shape allows",
                             Reason.WRONG_SHAPE)
    values = array.numpy()
    if values.shape != shape or values.dtype.str != np.dtype(dtype).str:
        raise UpdateRejected(f"array bytes hold {values.dtype} {values.shape}, not what its metadata says",
                             Reason.WRONG_SHAPE)
    return values


def _plain_delta(content, spec: ModelSpec) -> tuple[np.ndarray, int]:
    """The update's ``trained - global`` (flat float64) and its size in bytes, after every plaintext check."""
    if get_record(content, CIPHERTEXTS_KEY, ArrayRecord) is not None:
        raise UpdateRejected("an encrypted update in a run without HE", Reason.WRONG_MODE)
    arrays = get_record(content, ARRAYS_KEY, ArrayRecord)
    if arrays is None:
        raise UpdateRejected("the reply carries no update", Reason.WRONG_MODE)
    keys, expected = list(arrays.keys()), [key for key, _, _ in spec.layout]
    if keys != expected:
        extra, missing = sorted(set(keys) - set(expected)), sorted(set(expected) - set(keys))
        raise UpdateRejected(f"arrays do not match the model (extra {extra[:3]}, missing {missing[:3]}, or "
                             "out of order)", Reason.WRONG_SHAPE)
    parts = [_array(arrays[key], shape, dtype) for key, shape, dtype in spec.layout]
    trained = np.concatenate([p.ravel() for p in parts]).astype(np.float64)
    if not np.all(np.isfinite(trained)):
        raise UpdateRejected("the update holds NaN or infinite values", Reason.NON_FINITE)
    delta = trained - spec.weights
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    if peak > spec.max_abs_delta:
        raise UpdateRejected(f"max |update - global| is {peak:.3g}, above the bound {spec.max_abs_delta:g}",
                             Reason.OVER_NORM)
    return delta, sum(len(arrays[key].data) for key in keys)


def _commitment(content, spec: ModelSpec) -> None:
    """A train reply under HE commits to its ciphertexts (its signed leaf covers their digest) and carries none."""
    if get_record(content, ARRAYS_KEY, ArrayRecord) is not None:
        raise UpdateRejected("a plaintext update in a run with HE", Reason.WRONG_MODE)
    if get_record(content, CIPHERTEXTS_KEY, ArrayRecord) is not None:
        raise UpdateRejected("ciphertexts sent before the round's commitments were frozen: commit first, reveal "
                             "when asked", Reason.WRONG_MODE)
    header = get_record(content, HEADER_KEY, ConfigRecord)
    if header is None or header.get("num-values") != spec.encrypted_values or header.get("num-summed") != 1:
        raise UpdateRejected(f"a commitment must announce {spec.encrypted_values} encrypted values of one client",
                             Reason.WRONG_SHAPE)


def _ciphertexts(content, spec: ModelSpec) -> EncryptedPayload:
    """The update's ciphertexts: one client's (``num-summed`` 1), exactly as many as the model needs, each
    no larger than a ciphertext can be. SEAL parses them when they are added to the round's sum."""
    assert spec.he is not None
    if get_record(content, ARRAYS_KEY, ArrayRecord) is not None:
        raise UpdateRejected("a plaintext update in a run with HE", Reason.WRONG_MODE)
    payload = EncryptedPayload.take(content)
    if payload.num_values != spec.encrypted_values or payload.num_summed != 1:
        raise UpdateRejected(f"encrypted update of {payload.num_values} values (summed {payload.num_summed}); the "
                             f"run encrypts {spec.encrypted_values}", Reason.WRONG_SHAPE)
    expected = spec.he.num_ciphertexts(spec.encrypted_values)
    if len(payload.chunks) != expected:
        raise UpdateRejected(f"{len(payload.chunks)} ciphertexts, expected {expected}", Reason.WRONG_SHAPE)
    if any(len(c) > spec.he.max_ciphertext_bytes for c in payload.chunks):
        raise UpdateRejected("a ciphertext is larger than the scheme allows", Reason.CORRUPT_CIPHERTEXT)
    return payload
