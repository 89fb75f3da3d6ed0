"""Threshold CKKS (privacy.threshold, privacy.ring): SEAL-compatible arithmetic, t-of-n decryption, and what
fewer than t shares (or one client's share, with the server's help) get: noise."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy.errors import CiphertextError, ContextError, PlaintextRangeError
from privacy.ring import from_signed, mulmod, ring
from privacy.threshold import (
    JointPublicKey,
    SecretShare,
    ThresholdParams,
    _backend,
    _read,
    ciphertext_polys,
    combine_dealt,
    common_random_polynomial,
    crp_seed,
    fuse,
    fused_plaintext,
    lagrange,
    partial_decryption,
    public_key_share,
    shamir_deal,
    sum_ciphertexts,
)

P = ThresholdParams()
IDS = ["alice", "bob", "carol", "dave", "erin"]
POINTS = {c: i + 1 for i, c in enumerate(IDS)}
T = 3


class Federation:
    """Five parties' key generation, run in one process (each step is what one device computes)."""

    def __init__(self, ids=IDS, threshold=T) -> None:
        self.points = {c: i + 1 for i, c in enumerate(ids)}
        self.crp = common_random_polynomial(P, crp_seed({c: os.urandom(32) for c in ids}))
        self.secrets = {c: SecretShare.generate(P) for c in ids}
        self.pk = JointPublicKey.combine(P, [public_key_share(P, self.secrets[c], self.crp) for c in ids], self.crp)
        dealt = {c: shamir_deal(P, self.secrets[c], self.points, threshold) for c in ids}
        self.tsk = {k: combine_dealt(P, [dealt[i][k] for i in ids]) for k in ids}

    def decrypt(self, total, decryptors, length, flooding=None):
        xs = [self.points[c] for c in decryptors]
        std = P.flooding_std(len(self.points), 5) if flooding is None else flooding
        return fuse(P, total[:, 0], [partial_decryption(P, self.tsk[c], self.points[c], xs, total, std)
                               for c in decryptors], length)


@pytest.fixture(scope="module")
def fed() -> Federation:
    return Federation()


def test_ntt_is_seals(fed):
    """The transform matches SEAL's own (a ciphertext taken out of NTT form by SEAL, and back by us)."""
    backend = _backend(P)
    ct = seal.Ciphertext()
    JointPublicKey.combine  # noqa: B018 - the key below encrypts with SEAL's Encryptor
    fed.pk._encryptor.encrypt(backend.load(seal.Plaintext(), backend.plaintext_bytes(
        np.arange(P.n, dtype=np.uint64), P.scale)), ct)
    in_ntt = _read(ct, 2 * P.n).reshape(2, P.n)
    seal.Evaluator(backend.context).transform_from_ntt_inplace(ct)
    coefficients = _read(ct, 2 * P.n).reshape(2, P.n)
    r = ring(P.n, P.q)
    for poly in range(2):
        assert np.array_equal(r.ntt(coefficients[poly]), in_ntt[poly])
        assert np.array_equal(r.intt(in_ntt[poly]), coefficients[poly])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, P.q - 1), st.integers(0, P.q - 1)), min_size=1, max_size=50))
def test_mulmod_is_exact(pairs):
    a = np.array([x for x, _ in pairs], dtype=np.uint64)
    b = np.array([y for _, y in pairs], dtype=np.uint64)
    assert [int(v) for v in mulmod(a, b, P.q)] == [x * y % P.q for x, y in pairs]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, P.q - 1)), min_size=1, max_size=50),
       st.sampled_from(P.primes))
def test_shoups_product_by_a_constant_is_exact(pairs, q):
    """The NTT's products by its roots (privacy.ring.mulmod_shoup): exact for any 64-bit input, at both primes."""
    from privacy.ring import mulmod_shoup, shoup

    a = np.array([x for x, _ in pairs], dtype=np.uint64)
    w = np.array([y % q for _, y in pairs], dtype=np.uint64)
    assert [int(v) for v in mulmod_shoup(a, w, shoup(w, q), q)] == [x * (y % q) % q for x, y in pairs]


def test_shares_sum_to_a_key_seal_decrypts_identically(fed):
    """Differential: s = sum of the parties' secrets, handed to SEAL's Decryptor as a SecretKey, decrypts
    exactly the plaintext that t threshold partials (without flooding) fuse to."""
    backend = _backend(P)
    s_ntt = [sum(fed.secrets[c].ntt(P, prime).astype(object) for c in IDS) for prime in P.primes]
    key_data = np.concatenate([np.array([int(v) % prime for v in s], dtype=np.uint64)
                               for s, prime in zip(s_ntt, P.primes)])
    body = (np.array(backend.key_parms_id, dtype="<u8").tobytes()
            + np.array([key_data.size], dtype="<u8").tobytes() + np.array([1.0]).tobytes()
            + backend._array(key_data))
    key = backend.load(seal.SecretKey(), backend._wrap(body))
    decryptor = seal.Decryptor(backend.context, key)
    values = np.random.default_rng(1).uniform(-3, 3, 2 * P.n)
    total = sum_ciphertexts(P, [fed.pk.encrypt(values)])
    xs = [fed.points[c] for c in ["alice", "carol", "erin"]]
    partials = [partial_decryption(P, fed.tsk[c], fed.points[c], xs, total, 0.0) for c in ["alice", "carol", "erin"]]
    ours = fused_plaintext(P, total[:, 0], partials)
    for i in range(total.shape[0]):
        ct = backend.load(seal.Ciphertext(), backend.ciphertext_bytes(backend.data_parms_id, total[i], P.scale))
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        assert np.array_equal(_read(plain, P.n), ours[i])


def test_any_t_parties_decrypt_the_sum_within_the_stated_bound(fed):
    rng = np.random.default_rng(2)
    vectors = [rng.uniform(-0.8, 0.8, 5000) for _ in range(5)]
    total = sum_ciphertexts(P, [fed.pk.encrypt(v) for v in vectors])
    exact = np.sum(vectors, axis=0)
    bound = P.error_bound(len(IDS), 5, T)
    for decryptors in (["alice", "bob", "carol"], ["bob", "dave", "erin"], ["erin", "alice", "dave"]):
        assert np.abs(fed.decrypt(total, decryptors, exact.size) - exact).max() < bound
    assert bound < 1e-4  # and the bound is small enough for model weights


def test_fewer_than_t_shares_or_one_clients_own_share_decrypt_to_noise(fed):
    """The attacks of finding 4, rerun: a client (alone, or with the server, which holds every ciphertext and
    the public key) and any t-1 parties together get values nowhere near the plaintext, even without flooding."""
    victim = np.random.default_rng(3).uniform(-0.5, 0.5, P.n)
    total = sum_ciphertexts(P, [fed.pk.encrypt(victim)])
    attempts = [["alice"], ["bob", "dave"], ["carol", "erin"]]
    for coalition in attempts:
        recovered = fed.decrypt(total, coalition, P.n, flooding=0.0)
        assert np.abs(recovered - victim).mean() > 1.0  # uniform garbage over the +-2^3 range, not the values
        assert abs(np.corrcoef(recovered, victim)[0, 1]) < 0.1
    # a client's own (unweighted) threshold share used as if it were the key
    own = partial_decryption(P, fed.tsk["alice"], 1, [1], total, 0.0)
    assert abs(np.corrcoef(fuse(P, total[:, 0], [own], P.n), victim)[0, 1]) < 0.1


def test_lagrange_weights_recombine_the_secret(fed):
    q = P.q
    decryptors = ["bob", "carol", "erin"]
    xs = [fed.points[c] for c in decryptors]
    s = np.zeros(P.n, dtype=object)
    for c in decryptors:
        s = s + fed.tsk[c].astype(object) * lagrange(xs, fed.points[c], q)
    expected = sum(fed.secrets[c].ntt(P, q).astype(object) for c in IDS)
    assert np.array_equal(s % q, expected % q)
    with pytest.raises(ContextError):
        lagrange([1, 1, 2], 1, q)


def test_bad_ciphertexts_and_values_are_refused(fed):
    good = fed.pk.encrypt(np.zeros(10))[0]
    assert len(good) == P.ciphertext_bytes == 15 * P.n
    for bad in (good[:-1], good + b"\0", b"", "text"):
        with pytest.raises(CiphertextError):
            ciphertext_polys(P, bad)
    with pytest.raises(CiphertextError):
        ciphertext_polys(P, b"\xff" * P.ciphertext_bytes)  # residues above q
    for values in (np.array([np.nan]), np.array([5.0]), np.zeros((2, 2))):
        with pytest.raises(PlaintextRangeError):
            fed.pk.encrypt(values)


def test_the_noise_model_matches_what_seal_produces(fed):
    """ciphertext_noise_std predicts the measured noise of SEAL's public-key encryption (within 20%)."""
    values = np.random.default_rng(4).uniform(-1, 1, 4 * P.n)
    payloads = [fed.pk.encrypt(values) for _ in range(3)]
    total = sum_ciphertexts(P, payloads)
    noise = (fed.decrypt(total, IDS[:T], values.size, flooding=0.0) - 3 * values) * P.scale
    assert 0.8 < float(np.std(noise)) / P.ciphertext_noise_std(len(IDS), 3) < 1.2


def test_flooding_is_sized_from_the_citation():
    """log2 sigma = log2 E + lambda/2 + log2(64 tau)/2, and it leaves the decrypted values precise."""
    sigma = P.flooding_std(10, 10)
    assert np.isclose(np.log2(sigma), np.log2(P.noise_bound(10, 10)) + 15 + np.log2(64 * 4096) / 2)
    assert P.error_bound(10, 10, 6) < 1e-4


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(st.integers(2, 50), st.integers(1, 100_000), st.integers(0, 2**32 - 1))
def test_property_decrypted_sum_matches_the_weighted_sum(fed, clients, length, seed):
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 5000, clients)
    total_weight = int(weights.sum())
    deltas = [rng.uniform(-4, 4, length) for _ in range(clients)]
    total = sum_ciphertexts(P, [fed.pk.encrypt(w / total_weight * d) for w, d in zip(weights, deltas)])
    exact = sum(w / total_weight * d for w, d in zip(weights, deltas))
    got = fed.decrypt(total, random.Random(seed).sample(IDS, T), length, P.flooding_std(len(IDS), clients))
    assert np.abs(got - exact).max() < P.error_bound(len(IDS), clients, T)


def test_re_randomizing_keeps_the_plaintext_changes_c1_and_adds_only_rounding_noise(fed):
    """An encryption of zero from a public seed (privacy.threshold.rerandomize): the same seed gives the same
    ciphertext, another seed another; it decrypts to zero with noise of a fresh encryption's size (it is computed
    at the key level and divided by the special prime, as SEAL encrypts), so the sum keeps its plaintext."""
    from privacy.ring import to_signed
    from privacy.threshold import encryption_of_zero, rerandomize, ring

    zero = encryption_of_zero(fed.pk, b"seed", 3)
    assert np.array_equal(zero, encryption_of_zero(fed.pk, b"seed", 3))
    assert np.mean(zero == encryption_of_zero(fed.pk, b"other", 3)) < 0.01
    xs = [fed.points[c] for c in IDS[:T]]
    partials = [partial_decryption(P, fed.tsk[c], fed.points[c], xs, zero, 0) for c in IDS[:T]]
    r = ring(P.n, P.q)
    noise = np.concatenate([to_signed(r.intt(row), P.q) for row in fused_plaintext(P, zero[:, 0], partials)])
    assert np.abs(noise).max() < 8 * P.ciphertext_noise_std(len(IDS), 1)  # rounding noise, not u*e + e1*s
    values = np.random.default_rng(5).uniform(-1, 1, 9000)
    total = sum_ciphertexts(P, [fed.pk.encrypt(values)])
    moved = rerandomize(fed.pk, total, b"request")
    assert np.mean(moved[:, 1] == total[:, 1]) < 0.01  # c1 is no longer what the sum's makers chose
    assert np.abs(fed.decrypt(moved, IDS[:T], values.size) - values).max() < P.error_bound(len(IDS), 6, T)
