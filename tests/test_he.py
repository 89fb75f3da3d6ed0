"""CKKS layer: sums are exact within the stated bound, the server's context is keyless, bad bytes are refused."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedproof.keys import init_key_set
from privacy.errors import CiphertextError, ContextError, PlaintextRangeError, SecretKeyRefused
from privacy.he import (
    CLIENT_CONTEXT,
    SERVER_CONTEXT,
    HEParams,
    PublicContext,
    SecretContext,
    release_tolerance,
    round_for_release,
)

SECRET = SecretContext.generate()
PUBLIC = PublicContext.from_bytes(SECRET.public().to_bytes())


@pytest.mark.slow  # the shared-key scheme's property test (threshold's is beside it in test_threshold.py)
@settings(max_examples=20, deadline=None)
@given(
    length=st.integers(1, 100_000),
    clients=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
@example(length=100_000, clients=50, seed=1)  # the largest case, always tried
@example(length=4097, clients=2, seed=2)  # one value into a second ciphertext
def test_decrypted_sum_equals_the_weighted_sum(length: int, clients: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bound = SECRET.params.max_abs_delta
    counts = rng.integers(1, 2_000, clients)
    deltas = rng.uniform(-bound, bound, (clients, length))
    deltas[:, 0] = bound  # the extreme of the clipping range is included
    total = PUBLIC.new_sum(length)
    for n, delta in zip(counts, deltas):
        total.add(SECRET.encrypt(n * delta))
    exact = (counts[:, None] * deltas).sum(axis=0)
    decrypted = SECRET.decrypt(total.serialize(), length)
    assert np.abs(decrypted - exact).max() <= PUBLIC.params.error_bound(clients)
    released = round_for_release(decrypted, PUBLIC.params, clients)
    assert np.abs(released - exact).max() <= release_tolerance(PUBLIC.params, clients)


def test_ciphertexts_are_compact() -> None:
    values = np.random.default_rng(0).uniform(-4, 4, 65_536) * 6_000
    upload = sum(len(c) for c in SECRET.encrypt(values)) / values.size
    assert upload <= 8.0  # target: <= 12 bytes per parameter (float32 is 4)


def test_server_context_holds_no_key_and_cannot_decrypt(tmp_path: Path) -> None:
    files = init_key_set(tmp_path, [], he=True)
    assert {files.he_client.name, files.he_server.name} == {CLIENT_CONTEXT, SERVER_CONTEXT}
    for path in (files.he_client, files.he_server):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = PublicContext.load(files.he_server)
    assert not hasattr(public, "decrypt") and not hasattr(public, "encrypt")
    assert files.he_server.stat().st_size < 64  # parameters only: no secret, public, relin or Galois key
    with pytest.raises(ContextError, match="holds no secret key"):
        SecretContext.load(files.he_server)
    with pytest.raises(SecretKeyRefused, match="holds a secret key"):
        PublicContext.load(files.he_client)


def test_key_set_round_trips(tmp_path: Path) -> None:
    files = init_key_set(tmp_path, [], he=True)
    a, b = SecretContext.load(files.he_client), SecretContext.load(files.he_client)
    values = np.linspace(-3, 3, 5000)
    assert np.abs(b.decrypt(a.encrypt(values), values.size) - values).max() <= a.params.error_bound(1)
    other = SecretContext.generate()  # another key set cannot read it
    assert np.abs(other.decrypt(a.encrypt(values), values.size) - values).max() > 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:10], "not a fedproof CKKS context|too short"),
        (lambda b: b"XXXX" + b[4:], "not a fedproof CKKS context"),
        (lambda b: b[:-5], "does not match the file"),
        (lambda b: b + b"\0" * 7, "does not match the file"),
    ],
)
def test_damaged_context_files_are_refused(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "ctx"
    path.write_bytes(damage(SECRET.to_bytes()))
    with pytest.raises(ContextError, match=message):
        SecretContext.load(path)


def test_oversized_context_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.ctx"
    with open(path, "wb") as fh:
        fh.truncate(5 << 20)
    with pytest.raises(ContextError, match="larger than any context"):
        PublicContext.load(path)


def test_bad_ciphertexts_are_refused_and_leave_the_sum_intact() -> None:
    good = np.arange(10_000, dtype=float) / 10_000
    chunks = SECRET.encrypt(good)
    total = PUBLIC.new_sum(good.size)
    total.add(chunks)
    bad = [
        [chunks[0][: len(chunks[0]) // 2], *chunks[1:]],  # truncated
        [b"\0" * 64, *chunks[1:]],  # garbage
        chunks[:1],  # too few ciphertexts for the length
        [chunks[0] * 3, *chunks[1:]],  # oversized
    ]
    for update in bad:
        with pytest.raises(CiphertextError):
            total.add(update)
    other_scale = SecretContext.generate(HEParams(scale_bits=20))
    with pytest.raises(CiphertextError, match="scale"):
        total.add(other_scale.encrypt(good))
    assert total.count == 1
    assert np.abs(SECRET.decrypt(total.serialize(), good.size) - good).max() <= PUBLIC.params.error_bound(1)


@pytest.mark.parametrize("values", [np.array([1.0, np.nan]), np.array([np.inf]), np.array([5e6]), np.zeros((2, 2))])
def test_values_that_cannot_be_encrypted_faithfully_are_refused(values: np.ndarray) -> None:
    with pytest.raises(PlaintextRangeError):
        SECRET.encrypt(values)


def test_parameters_outside_security_or_precision_are_refused() -> None:
    with pytest.raises(ContextError):
        HEParams(poly_modulus_degree=1000)
    with pytest.raises(ContextError, match="128-bit security"):
        HEParams(poly_modulus_degree=2048, modulus_bits=60)
    with pytest.raises(ContextError):
        HEParams(scale_bits=45)
