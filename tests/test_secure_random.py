"""The CSPRNG behind DP noise and Poisson sampling: right distributions, a new stream per key, no other input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from privacy.secure_random import SecurePoissonSampler, SecureRandom

KEY = bytes(range(16))


def test_uniforms_are_uniform_on_the_half_open_unit_interval() -> None:
    u = SecureRandom(KEY).uniform(200_000)
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert len(np.unique(u)) == len(u)  # 53 bits each: no collisions at this size


def test_normals_and_dp_noise_are_gaussian_with_the_asked_spread() -> None:
    rng = SecureRandom(KEY)
    z = rng.standard_normal(100_001)
    assert z.shape == (100_001,) and stats.kstest(z, "norm").pvalue > 1e-3
    noise = rng.gaussian_noise(2.5, (300, 200), torch.float32)
    assert noise.shape == (300, 200) and noise.dtype == torch.float32
    assert stats.kstest(noise.numpy().ravel() / 2.5, "norm").pvalue > 1e-3


def test_poisson_batches_take_each_sample_with_the_rate() -> None:
    sampler = SecurePoissonSampler(num_samples=1000, sample_rate=0.05, steps=400, rng=SecureRandom(KEY))
    batches = list(sampler)
    assert len(sampler) == len(batches) == 400
    sizes = np.array([len(b) for b in batches])
    assert sizes.mean() == pytest.approx(50, rel=0.05)  # Binomial(1000, 0.05)
    counts = np.bincount(np.concatenate(batches), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-3  # no sample favoured
    assert all(len(set(b)) == len(b) and b == sorted(b) for b in batches)


def test_the_stream_is_the_key_and_only_the_key() -> None:
    assert np.array_equal(SecureRandom(KEY).uniform(64), SecureRandom(KEY).uniform(64))
    other = bytes([1]) + KEY[1:]
    assert not np.array_equal(SecureRandom(KEY).uniform(64), SecureRandom(other).uniform(64))
    fresh = [SecureRandom.from_os().uniform(8) for _ in range(2)]
    assert not np.array_equal(*fresh)  # keyed from OS entropy each time
    rng = SecureRandom(KEY)
    assert not np.array_equal(rng.uniform(64), rng.uniform(64))  # the stream moves on
    with pytest.raises(ValueError, match="16 bytes"):
        SecureRandom(b"short")
