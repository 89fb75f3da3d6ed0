"""Hostile bytes at every decoder of outside input: each raises its typed error, nothing else, and nothing is kept.

Generated with hypothesis: well over 1,000 cases in the default run (random bytes, and mutations of valid
messages: truncations, bit flips, extensions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedproof.core.data import parse_idx
from fedproof.base.errors import FedproofError, UpdateRejected
from fedproof.core.replies import (Declined, Evaluation, ModelCosignature, ModelSpec, PartialDecryption, Reason, Rejection,
                              Update, decode_cosign_reply, decode_evaluate_reply, decode_partial_reply,
                              decode_train_reply)
from fedproof.core.protocol import (CIPHERTEXT_STYPE, CIPHERTEXTS_KEY, HEADER_KEY, LENGTHS_KEY, PACKED_KEY, SIGNED_KEY,
                               EncryptedPayload, SignedEnvelope, pack_ciphertexts)
from ledger.bundle import BundleError, RoundBundle
from ledger.errors import KeyFileError, UpdateVerificationError
from ledger.signing import SignedFields, SigningKey, payload_digest
from ledger.verification import Domain, AllowList, UpdateVerifier
from privacy.errors import CiphertextError
from privacy.threshold import ThresholdParams, ciphertext_polys, sum_ciphertexts
from test_threshold import Federation

VALUES = np.linspace(-1, 1, 5000)
MANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def mutated(draw, valid: bytes):
    """A valid message, cut, extended, or with some bytes flipped."""
    kind = draw(st.sampled_from(["cut", "extend", "flip", "random"]))
    if kind == "cut":
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if kind == "extend":
        return valid + draw(st.binary(min_size=1, max_size=64))
    if kind == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    return draw(st.binary(max_size=4096))


THRESHOLD = ThresholdParams()
JOINT = None  # a three-party key, made on first use


def _joint():
    global JOINT
    if JOINT is None:
        JOINT = Federation(["a", "b", "c"], 2)
        JOINT.good = JOINT.pk.encrypt(VALUES)
    return JOINT


@MANY
@given(st.data())
def test_ciphertexts_mutated_in_transit_are_refused(data) -> None:
    good = _joint().good
    chunk = data.draw(mutated(good[0]))
    assume(chunk != good[0])
    # the digest the client signed no longer matches, whatever the ciphertext parser would think of the bytes (a
    # sender that signs its own garbage is refused when the sum parses it: the next test)
    content = EncryptedPayload(tuple(good), VALUES.size).put(RecordDict())
    content[CIPHERTEXTS_KEY] = pack_ciphertexts((chunk, *good[1:]))
    with pytest.raises(UpdateRejected) as refused:
        EncryptedPayload.take(content)
    assert refused.value.reason == "payload-mismatch"


@MANY
@given(st.data())
def test_threshold_ciphertexts_random_or_mutated_are_refused_or_parse_to_residues(data) -> None:
    fed = _joint()
    chunk = data.draw(mutated(fed.good[0]))
    try:
        polys = ciphertext_polys(THRESHOLD, chunk)
    except CiphertextError:
        return
    assert polys.shape == (2, THRESHOLD.n) and np.all(polys < THRESHOLD.q)


values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=20),
                   st.binary(max_size=40), st.booleans())


@MANY
@given(header=st.dictionaries(st.sampled_from(["num-values", "num-summed", "sha256", "other"]), values, max_size=4),
       chunks=st.lists(st.binary(max_size=64), max_size=4), stype=st.sampled_from([CIPHERTEXT_STYPE, "numpy.ndarray"]),
       lengths=st.one_of(st.none(), st.lists(st.integers(-5, 300), max_size=5)), extra=st.booleans())
def test_encrypted_payload_records_are_refused_with_update_rejected(header, chunks, stype, lengths, extra) -> None:
    content = RecordDict()
    try:
        content[HEADER_KEY] = ConfigRecord(header)
    except (TypeError, ValueError):
        return  # Flower itself refuses to build such a record
    packed = b"".join(chunks)
    record = {PACKED_KEY: Array(dtype="bytes", shape=(len(packed),), stype=stype, data=packed),
              LENGTHS_KEY: Array(np.array([len(c) for c in chunks] if lengths is None else lengths, dtype="<i8"))}
    if extra:
        record["00000"] = Array(dtype="bytes", shape=(len(packed),), stype=stype, data=packed)
    content[CIPHERTEXTS_KEY] = ArrayRecord(record)
    try:
        payload = EncryptedPayload.take(content)
    except UpdateRejected:
        return
    with pytest.raises(CiphertextError):  # what the round's sum makes of it: no such bytes parse as a ciphertext
        sum_ciphertexts(THRESHOLD, [payload.chunks])


KEY = SigningKey.generate()
ALLOW = AllowList({"0": KEY.public_key})
FIELDS = SignedFields(chain_id=1, contract=bytes(20), run_id="r", round=1, client_id="0",
                      payload_sha256=payload_digest([b"x"]), num_examples=5, epsilon_scaled=7)


@MANY
@given(record=st.dictionaries(st.sampled_from(["tag", "chain-id", "contract", "run-id", "round", "client-id",
                                               "payload-sha256", "num-examples", "epsilon-scaled", "signature"]),
                              values, max_size=10))
def test_signature_records_are_refused_with_typed_errors(record) -> None:
    content = RecordDict()
    try:
        content[SIGNED_KEY] = ConfigRecord(record)
    except (TypeError, ValueError):
        return
    verifier = UpdateVerifier(ALLOW, Domain(1, bytes(20), "r"))
    with pytest.raises((UpdateRejected, UpdateVerificationError)):
        envelope = SignedEnvelope.take(content)
        verifier.verify(envelope.fields, envelope.signature, payload_digest([b"x"]), 1)


@MANY
@given(st.data())
def test_forged_signatures_never_verify(data) -> None:
    signature = data.draw(mutated(KEY.sign(FIELDS)))
    verifier = UpdateVerifier(ALLOW, Domain(1, bytes(20), "r"))
    if signature == KEY.sign(FIELDS):
        return
    with pytest.raises(UpdateVerificationError):
        verifier.verify(FIELDS, signature, FIELDS.payload_sha256, 1)


BUNDLE = RoundBundle("r", 1, 1, bytes(20), bytes(32), b"\x01" * 32).to_bytes()


@MANY
@given(st.data())
def test_bundles_random_or_mutated_are_refused(data) -> None:
    blob = data.draw(mutated(BUNDLE))
    if blob == BUNDLE:
        return
    try:
        bundle = RoundBundle.from_bytes(blob)
    except BundleError:
        return
    assert bundle.to_bytes() == blob  # only a canonical bundle is ever accepted


@MANY
@given(st.binary(max_size=2048))
def test_idx_decoder_refuses_random_bytes(blob) -> None:
    try:
        array = parse_idx(blob)
    except FedproofError:
        return
    assert array.size * array.itemsize <= len(blob)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=512))
def test_allow_lists_and_keys_refuse_random_files(tmp_path: Path, blob) -> None:
    path = tmp_path / "x"
    path.write_bytes(blob)
    with pytest.raises(KeyFileError):
        AllowList.load(path)
    with pytest.raises(KeyFileError):
        SigningKey.load(path)


SPEC = ModelSpec.of(ArrayRecord({"w": Array(np.zeros((2, 3), np.float32))}), max_abs_delta=4.0)
array_values = st.one_of(st.just(np.zeros((2, 3), np.float32)), st.just(np.full((2, 3), np.nan, np.float32)),
                         st.just(np.zeros((3, 2), np.float32)), st.just(np.zeros((2, 3), np.float64)),
                         st.just(np.zeros(5000, np.float64)), st.just(np.ones((2, 3), np.int64)))
metric_values = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.lists(st.floats(), max_size=3))


@st.composite
def replies(draw):
    """A reply of any shape: random metrics, config and arrays under the keys the decoders read, or not."""
    from flwr.app import Message, MetricRecord
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    content = RecordDict()
    for key in draw(st.lists(st.sampled_from(["metrics", "client", "signed", "arrays", "he", "he-header", "sum",
                                              "partial", "decryption"]), max_size=5, unique=True)):
        try:
            if key in ("metrics",):
                content[key] = MetricRecord(draw(st.dictionaries(st.sampled_from(
                    ["num-examples", "train_loss", "val_loss", "val_accuracy", "train-seconds"]), metric_values)))
            elif key in ("arrays", "sum", "partial"):
                names = draw(st.lists(st.sampled_from(["w", "sum", "partial", "extra"]), min_size=1, max_size=2,
                                      unique=True))
                content[key] = ArrayRecord({n: Array(draw(array_values)) for n in names})
            elif key == "he":
                content[key] = ArrayRecord({
                    PACKED_KEY: Array(dtype="bytes", shape=(3,), stype=CIPHERTEXT_STYPE, data=draw(st.binary(max_size=64))),
                    LENGTHS_KEY: Array(np.array(draw(st.lists(st.integers(-1, 70), max_size=3)), dtype="<i8"))})
            else:
                content[key] = ConfigRecord(draw(st.dictionaries(st.sampled_from(
                    ["client-id", "status", "epsilon", "reason", "num-values", "num-summed", "sha256", "tag",
                     "signature", "round", "sum-sha256", "merkle-root"]), values, max_size=6)))
        except (TypeError, ValueError):
            pass  # Flower itself refuses to build such a record
    train = Message(RecordDict(), dst_node_id=7, message_type="train")
    return Message(content, reply_to=train)


@MANY
@given(msg=replies())
def test_every_reply_decoder_returns_a_value_and_never_raises(msg) -> None:
    for outcome in (decode_train_reply(msg, SPEC), decode_evaluate_reply(msg), decode_partial_reply(msg, (2, 3)),
                    decode_cosign_reply(msg)):
        assert isinstance(outcome, (Update, Declined, Evaluation, PartialDecryption, ModelCosignature, Rejection))
        if isinstance(outcome, Rejection):
            assert outcome.node_id == 7 and isinstance(outcome.reason, Reason)
        if isinstance(outcome, Update):  # only a well-formed update gets this far
            assert outcome.delta is not None and np.all(np.isfinite(outcome.delta))


DEEP = "[" * 100_000 + "]" * 100_000


def test_policy_and_allow_list_files_nested_too_deeply_are_typed_errors(tmp_path: Path) -> None:
    """The second review: RecursionError from json on deeply nested input (and, where a library raised Python's
    recursion limit, a crash of the interpreter: this test did that), now the loaders' own typed errors, refused
    before parsing."""
    from ledger.bundle import BundleError, RoundBundle
    from ledger.errors import KeyFileError
    from ledger.trust import LedgerTrust
    from ledger.verification import AllowList
    from privacy.policy import PolicyError, PrivacyPolicy

    for text in (DEEP, '{"version": 1, "clients": ' + DEEP + "}"):
        path = tmp_path / "file.json"
        path.write_text(text)
        with pytest.raises(KeyFileError):
            AllowList.load(path)
        with pytest.raises(PolicyError):
            PrivacyPolicy.load(path)
        with pytest.raises(KeyFileError):
            LedgerTrust.load(path)
        with pytest.raises(BundleError):
            RoundBundle.from_bytes(text.encode())


@pytest.mark.parametrize("ndim, dims", [(65, [1] * 65), (17, [1] * 17), (3, [2**32 - 1] * 3), (8, [2**31] * 8)])
def test_idx_headers_with_huge_or_too_many_dimensions_are_typed_errors(ndim: int, dims: list[int]) -> None:
    from fedproof.core.data import DataIntegrityError

    blob = bytes([0, 0, 0x08, ndim]) + np.asarray(dims, ">u4").tobytes() + b"\x00" * 16
    with pytest.raises(DataIntegrityError):
        parse_idx(blob)


def test_a_gzip_bomb_is_refused_as_it_expands(tmp_path: Path) -> None:
    """`edge predict` input: 1 GiB of zeros compresses to ~1 MiB; decompressing stops at the limit, in bounded
    memory, with a typed error (it used to expand the whole stream)."""
    import gzip
    import resource

    from fedproof.core.data import DataIntegrityError, encode_idx, gunzip_bounded
    from fedproof.base.errors import FedproofError
    from fl_client.edge import MAX_IMAGE_BYTES, read_images

    chunk = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)  # ~64 KiB
    path = tmp_path / "bomb.idx.gz"
    header = gzip.compress(bytes([0, 0, 0x08, 3]) + np.asarray([2**24, 28, 28], ">u4").tobytes())
    path.write_bytes(header + chunk * 16)  # gzip members concatenate: 1 GiB of payload
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FedproofError, match="limit"):
        read_images(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 4 * MAX_IMAGE_BYTES / 2**20
    with pytest.raises(DataIntegrityError, match="truncated"):
        gunzip_bounded(gzip.compress(b"x" * 1000)[:-12], 10_000)
    images = np.zeros((3, 28, 28), np.uint8)
    assert gunzip_bounded(gzip.compress(encode_idx(images)), 10_000) == encode_idx(images)
