"""Randomness that protects a data holder: DP noise and Poisson sampling from a CSPRNG keyed on the device.

Why not a ``torch.Generator``: whoever knows its seed replays every draw. fedproof once seeded Opacus' noise from
the run's seed, the round and the partition, all of which the server knows, and a server regenerated a client's
noise bit for bit (trust review, finding 1). Seeding torch from OS entropy instead would still leave a Mersenne
Twister or Philox state that its own outputs can reveal, and Opacus' ``secure_mode`` needs torchcsprng, which has
no build for torch 2.13.

So: a ChaCha20 keystream (RFC 8439, through pyca/cryptography), keyed with 32 bytes of ``os.urandom`` on the
client and never stored or sent. ChaCha20 is a stream cipher whose output cannot be told from random without the
key; it runs at GB/s in software (no AES-NI needed), and it is already a dependency. From the stream:

* uniforms: 53 random bits per float64, in [0, 1);
* standard normals: Box-Muller on pairs of uniforms (both the cosine and the sine branch);
* DP noise of standard deviation s: the sum of four independent N(0, s^2) draws, halved. Floating-point
  Gaussian samplers leave gaps that reveal which sample was drawn (Mironov 2012; the attack on Opacus: Jin et al.
  2021, arXiv 2112.05307). Summing 2n draws and dividing by sqrt(2n) is the mitigation of Holohan and Braghin
  2021 (arXiv 2107.10138, section 5.1) that Opacus' secure mode applies with n = 2; we follow it.

Training takes its key from :func:`_entropy` (``os.urandom``) and nothing else: no parameter, setting or message
can choose it. Tests that need a repeatable stream replace ``_entropy`` (pytest's monkeypatch), or build
``SecureRandom(key)`` themselves.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch.utils.data import Sampler

KEY_BYTES = 32
_TWO_53 = 2.0**-53


def _entropy(n: int) -> bytes:
    return os.urandom(n)


class SecureRandom:
    """A ChaCha20 keystream turned into uniforms, normals and DP noise (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a SecureRandom key is {KEY_BYTES} bytes")
        # A fresh key per generator, so the all-zero nonce (counter starting at 0) never repeats under one key.
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    @classmethod
    def from_os(cls) -> SecureRandom:
        """A generator keyed from the operating system's entropy: what training uses."""
        return cls(_entropy(KEY_BYTES))

    def uniform(self, n: int) -> np.ndarray:
        """``n`` float64 uniforms in [0, 1), 53 random bits each."""
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype="<u8")
        return (words >> np.uint64(11)).astype(np.float64) * _TWO_53

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` independent N(0, 1) draws (Box-Muller)."""
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 - u is in (0, 1]: the log is finite
        angle = 2.0 * math.pi * u[pairs:]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n]

    def gaussian_noise(self, std: float, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """N(0, std^2) noise of ``shape``: four independent draws summed and halved (Holohan and Braghin, n = 2)."""
        size = math.prod(shape)
        draws = self.standard_normal(4 * size).reshape(4, size).sum(axis=0) * (std / 2.0)
        return torch.from_numpy(draws.reshape(tuple(shape))).to(dtype)

    def poisson_mask(self, n: int, rate: float) -> np.ndarray:
        """Which of ``n`` samples a Poisson-sampled batch takes: each independently with probability ``rate``."""
        return self.uniform(n) < rate


class SecurePoissonSampler(Sampler[list[int]]):
    """Opacus' uniform-with-replacement (Poisson) batch sampler, drawing from a :class:`SecureRandom`."""

    def __init__(self, num_samples: int, sample_rate: float, steps: int, rng: SecureRandom) -> None:
        self.num_samples, self.sample_rate, self.steps, self.rng = num_samples, sample_rate, steps, rng

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield np.flatnonzero(self.rng.poisson_mask(self.num_samples, self.sample_rate)).tolist()
