"""Hostile bytes at every decoder of outside input: each raises its typed error, nothing else, and nothing is kept.

Generated with hypothesis: well over 1,000 cases in the default run (random bytes, and mutations of valid
messages: truncations, bit flips, extensions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedproof.data import parse_idx
from fedproof.errors import FedproofError, UpdateRejected
from fedproof.protocol import CIPHERTEXT_STYPE, CIPHERTEXTS_KEY, HEADER_KEY, SIGNED_KEY, EncryptedPayload, SignedEnvelope
from ledger.bundle import BundleError, RoundBundle
from ledger.errors import KeyFileError, UpdateVerificationError
from ledger.signing import SignedFields, SigningKey, payload_digest
from ledger.verification import AllowList, UpdateVerifier
from privacy.errors import CiphertextError, ContextError
from privacy.he import PublicContext, SecretContext

SECRET = SecretContext.generate()
PUBLIC = PublicContext.from_bytes(SECRET.public().to_bytes())
GOOD = SECRET.encrypt(np.linspace(-1, 1, 5000))
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


@MANY
@given(st.data())
def test_ciphertexts_random_or_mutated_never_corrupt_the_sum(data) -> None:
    total = PUBLIC.new_sum(5000)
    chunk = data.draw(mutated(GOOD[0]))
    try:
        total.add([chunk, *GOOD[1:]])
    except CiphertextError:
        assert total.count == 0  # refused whole
        return
    assert total.count == 1  # SEAL accepted it (a flip it cannot see): the payload digest catches those


@MANY
@given(st.data())
def test_contexts_random_or_mutated_are_refused_or_parse(data) -> None:
    blob = data.draw(mutated(SECRET.to_bytes()[:200]))  # the header and the start of the key
    with pytest.raises(ContextError):
        SecretContext.from_bytes(blob)
    public = data.draw(mutated(PUBLIC.to_bytes()))
    try:
        PublicContext.from_bytes(public)
    except ContextError:
        pass


values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=20),
                   st.binary(max_size=40), st.booleans())


@MANY
@given(header=st.dictionaries(st.sampled_from(["num-values", "num-summed", "sha256", "other"]), values, max_size=4),
       chunks=st.lists(st.binary(max_size=64), max_size=4), stype=st.sampled_from([CIPHERTEXT_STYPE, "numpy.ndarray"]))
def test_encrypted_payload_records_are_refused_with_update_rejected(header, chunks, stype) -> None:
    content = RecordDict()
    try:
        content[HEADER_KEY] = ConfigRecord(header)
    except (TypeError, ValueError):
        return  # Flower itself refuses to build such a record
    content[CIPHERTEXTS_KEY] = ArrayRecord({f"{i:05d}": Array(dtype="bytes", shape=(len(c),), stype=stype, data=c)
                                            for i, c in enumerate(chunks)})
    try:
        payload = EncryptedPayload.take(content)
    except UpdateRejected:
        return
    with pytest.raises((CiphertextError, UpdateRejected)):
        PUBLIC.new_sum(payload.num_values).add(payload.chunks)


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
    verifier = UpdateVerifier(ALLOW, 1, bytes(20), "r")
    with pytest.raises((UpdateRejected, UpdateVerificationError)):
        envelope = SignedEnvelope.take(content)
        verifier.verify(envelope.fields, envelope.signature, payload_digest([b"x"]), 1)


@MANY
@given(st.data())
def test_forged_signatures_never_verify(data) -> None:
    signature = data.draw(mutated(KEY.sign(FIELDS)))
    verifier = UpdateVerifier(ALLOW, 1, bytes(20), "r")
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
