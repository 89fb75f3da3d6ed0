"""Threshold CKKS on SEAL: a joint public key, t-of-n secret shares, flooded partial decryptions.

The design is Mouchet, Troncoso-Pastoriza, Bossuat and Hubaux, "Multiparty Homomorphic Encryption from
Ring-Learning-with-Errors" (PETS 2021), as Lattigo's ``multiparty`` package implements it; SEAL has no
multiparty API (microsoft/SEAL#536), so the share arithmetic is here, in numpy, on SEAL's own NTT-form data
(:mod:`privacy.ring`). SEAL still does what it does well: its public-key encryption, its serialization, its
parameter and security checks. Notation: R_q = Z_q[X]/(X^N + 1); every ring element is in NTT form.

Key generation, dealer-free (Mouchet et al., Protocol 1 "EncKeyGen"; Lattigo ``multiparty.PublicKeyGenProtocol``):
    a   = CRP(seed)                         common random polynomial, from every party's seed (no one picks it)
    s_i <- ternary,  e_i <- chi(sigma=3.2)  party i's secret and noise, drawn on its device
    p0_i = -a * s_i + e_i                   its public-key share, at the key level (q and the special prime p)
    pk  = (sum_i p0_i, a)                   = (-a * s + e, a) for s = sum_i s_i: a SEAL public key
No party, and not the server, ever holds s.

Threshold (Mouchet, Bertrand and Hubaux, "An Efficient Threshold Access-Structure for RLWE-Based Multiparty
Homomorphic Encryption", eprint 2022/780; Lattigo ``multiparty.Thresholdizer`` / ``Combiner.GenAdditiveShare``):
    party i deals Shamir shares of s_i: f_i(X) = s_i + sum_{j=1}^{t-1} r_ij X^j,  r_ij uniform in R_q,
    and sends f_i(x_k) to party k (x_k = its public point); party k keeps tsk_k = sum_i f_i(x_k).
    For any set T of t parties: sum_{k in T} lambda_k tsk_k = s, lambda_k = prod_{j in T, j!=k} x_j/(x_j - x_k).
Fewer than t shares are uniformly distributed and independent of s (Shamir 1979).

Decryption (Mouchet et al., Protocol 3 "KeySwitch" towards the zero key; Lattigo ``multiparty.KeySwitchProtocol``):
    h_k = lambda_k tsk_k * c1 + e_k,  e_k <- N(0, sigma_flood^2)       decryptor k's partial decryption
    c0 + sum_{k in T} h_k = Delta * m + e_ct + sum_k e_k              the plaintext, fused by anyone
The flooding noise e_k hides e_ct, which depends on the secret key (Li and Micciancio, EUROCRYPT 2021, show
that releasing e_ct leaks s). Its size is :meth:`ThresholdParams.flooding_std`:
    sigma_flood = sqrt(64 tau) * 2^(lambda/2) * E
is the bound for ``lambda`` bits of statistical security against key recovery after ``tau`` decryptions of
ciphertexts whose noise has l2 norm at most E (Li, Micciancio, Schultz and Sorrell, "Securing Approximate
Homomorphic Encryption Using Differential Privacy", CRYPTO 2022, as restated for threshold decryption in the
noise-flooding literature); lambda = 30 and tau = 4096 here, as OpenFHE's noise-flooding mode defaults to 30 bits.

Encoding: values go into polynomial *coefficients* (coefficient packing: N reals per ciphertext, Delta x_i
rounded), not CKKS slots. Aggregation needs additions only, and coefficient packing adds the flooding noise to
each value once, instead of spread over sqrt(N/2) through the canonical embedding: 2^5.5 = 45x more precision
for the same modulus, which is what lets the flooding fit in one 60-bit prime (15 bytes per value on the wire).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import tenseal.sealapi as seal

from privacy import seal_io
from privacy.errors import CiphertextError, ContextError
from privacy.ring import U64, addmod, from_signed, mulmod, mulmod_shoup, ring, shoup, submod, to_signed

KEY_NOISE_STD = 3.2
"""Standard deviation of the key-generation noise e_i (SEAL's and Lattigo's default)."""
KEY_NOISE_BOUND = 19
"""e_i is clipped at 6 sigma, as SEAL clips its own."""


@dataclass(frozen=True)
class ThresholdParams:
    """The scheme every party of a federation shares (fixed defaults: nothing here comes from a message)."""

    poly_modulus_degree: int = 4096
    data_bits: int = 60
    """The one prime q ciphertexts live in: 15 bytes per value, two polynomials of N 60-bit coefficients."""
    special_bits: int = 49
    """The key-level prime p (SEAL's special prime): public-key encryption works mod q*p and divides by p,
    which brings the encryption noise down to rounding noise. 60 + 49 = 109 bits: SEAL's 128-bit bound for N."""
    scale_bits: int = 56
    max_abs_value: float = 4.0
    """Largest |value| a ciphertext or a sum may hold: 2^(56+2) stays below q/2 = 2^59."""
    statistical_security: int = 30
    """lambda of the flooding bound (bits)."""
    max_decryptions: int = 4096
    """tau: ciphertext decryptions a key share may take part in before it is exhausted."""

    @property
    def n(self) -> int:
        return self.poly_modulus_degree

    @cached_property
    def primes(self) -> tuple[int, int]:
        """(q, p), as SEAL chooses them for these bit sizes."""
        moduli = seal.CoeffModulus.Create(self.n, [self.data_bits, self.special_bits])
        return moduli[0].value(), moduli[1].value()

    @property
    def q(self) -> int:
        return self.primes[0]

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits

    def num_ciphertexts(self, length: int) -> int:
        return -(-length // self.n)

    @property
    def ciphertext_bytes(self) -> int:
        """One ciphertext on the wire: two polynomials of N residues, ``data_bits`` each, bit-packed."""
        return 2 * self.n * self.data_bits // 8

    @property
    def max_ciphertext_bytes(self) -> int:
        return self.ciphertext_bytes

    def ciphertext_noise_std(self, parties: int, summands: int) -> float:
        """Per-coefficient std of the noise of a sum of ``summands`` fresh ciphertexts under the key of ``parties``.

        SEAL's public-key encryption at q works at q*p and divides by p (its ``encrypt_zero_internal``), so what
        is left is the rounding: r0 + r1*s with r0, r1 uniform in [-1/2, 1/2] (variance 1/12) and s = sum of
        ``parties`` ternary keys (variance 2/3 each): N*parties/18 + 1/12, plus 1/12 for rounding Delta*x.
        ``tests/test_threshold.py`` measures it."""
        return math.sqrt(summands * (self.n * parties / 18 + 1 / 6))

    def noise_bound(self, parties: int, summands: int) -> float:
        """E: an l2 bound on that noise, sqrt(N) * std with a factor 2 of margin (the l2 norm of N independent
        coefficients concentrates at sqrt(N) * std)."""
        return 2 * math.sqrt(self.n) * self.ciphertext_noise_std(parties, summands)

    def flooding_std(self, parties: int, summands: int) -> float:
        """sigma_flood = sqrt(64 tau) * 2^(lambda/2) * E (see the module docstring for the citation)."""
        return (math.sqrt(64 * self.max_decryptions) * 2.0 ** (self.statistical_security / 2)
                * self.noise_bound(parties, summands))

    def error_bound(self, parties: int, summands: int, decryptors: int) -> float:
        """Per-value bound on |decrypted sum - exact sum| for ``decryptors`` flooded partials (8 std: the values
        are Gaussian, so a miss is below 1e-15 per value)."""
        std = math.sqrt(decryptors * self.flooding_std(parties, summands) ** 2
                        + self.ciphertext_noise_std(parties, summands) ** 2)
        return 8 * std / self.scale


def majority(parties: int) -> int:
    return parties // 2 + 1


# --------------------------------------------------------------------------------------- SEAL objects


class _Seal:
    """SEAL's context for the parameters, and its objects as bytes (its Python API saves to paths only)."""

    _HEADER = struct.Struct("<HBBBBHQ")  # SEAL's SEALHeader: magic, header size, version, compression, size

    def __init__(self, params: ThresholdParams) -> None:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.n)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.n, [params.data_bits, params.special_bits]))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ContextError(f"SEAL rejects the threshold CKKS parameters {params}")
        self.params = params
        self.key_parms_id = list(self.context.key_parms_id())
        self.data_parms_id = list(self.context.first_parms_id())
        self._version = self._seal_version()

    def _seal_version(self) -> tuple[int, int]:
        plain = seal.Plaintext()
        raw = self.save(plain)
        return raw[3], raw[4]

    save = staticmethod(seal_io.save)

    def load(self, obj, data: bytes):
        return seal_io.load(self.context, obj, data)

    def _wrap(self, body: bytes) -> bytes:
        major, minor = self._version
        return self._HEADER.pack(0xA15E, 16, major, minor, 0, 0, 16 + len(body)) + body

    def _array(self, data: np.ndarray) -> bytes:
        return self._wrap(struct.pack("<Q", data.size) + data.astype("<u8").tobytes())

    def ciphertext_bytes(self, parms_id: list[int], polys: Sequence[np.ndarray], scale: float) -> bytes:
        """SEAL's uncompressed layout of an NTT-form ciphertext (``Ciphertext::save_members``)."""
        data = np.concatenate([np.asarray(p, dtype=U64).ravel() for p in polys])
        moduli = data.size // (len(polys) * self.params.n)
        body = (struct.pack("<4Q", *parms_id) + b"\x01"
                + struct.pack("<QQQdQ", len(polys), self.params.n, moduli, scale, 1) + self._array(data))
        return self._wrap(body)

    def plaintext_bytes(self, values: np.ndarray, scale: float) -> bytes:
        """SEAL's layout of an NTT-form plaintext at the data level (``Plaintext::save_members``)."""
        body = struct.pack("<4Q", *self.data_parms_id) + struct.pack("<Qd", values.size, scale) + self._array(values)
        return self._wrap(body)

_BACKENDS: dict[ThresholdParams, _Seal] = {}


def _backend(params: ThresholdParams) -> _Seal:
    if params not in _BACKENDS:
        _BACKENDS[params] = _Seal(params)
    return _BACKENDS[params]


def _read(obj, size: int) -> np.ndarray:
    array = obj.dyn_array()
    return np.fromiter((array.at(i) for i in range(size)), dtype=U64, count=size)


# --------------------------------------------------------------------------------------- randomness

class Randomness:
    """Where a party's secret draws come from: keys, Shamir coefficients, flooding noise. Always the OS's
    entropy (``os.urandom`` through :class:`privacy.secure_random.SecureRandom`); tests construct their own."""

    def __init__(self, rng=None) -> None:
        if rng is None:
            from privacy.secure_random import SecureRandom  # keyed from os.urandom
            rng = SecureRandom.from_os()
        self._rng = rng

    def uniform_mod(self, q: int, size: int) -> np.ndarray:
        """Uniform residues mod q: 64 random bits masked to q's bit length, the rest rejected."""
        mask, out = (1 << q.bit_length()) - 1, np.empty(0, dtype=U64)
        while out.size < size:
            words = np.frombuffer(os.urandom(8 * 2 * size), dtype=U64) & U64(mask)
            out = np.concatenate([out, words[words < q]])
        return out[:size]

    def ternary(self, size: int) -> np.ndarray:
        return np.floor(self._rng.uniform(size) * 3).astype(np.int64) - 1

    def gaussian(self, std: float, size: int) -> np.ndarray:
        """Rounded N(0, std^2): four draws summed and halved (as DP noise is, see privacy.secure_random)."""
        draws = self._rng.standard_normal(4 * size).reshape(4, size).sum(axis=0) * (std / 2.0)
        return np.rint(draws).astype(np.int64)


# --------------------------------------------------------------------------------------- key generation

CRP_DOMAIN = b"fedproof/crp/v1\x00"


def common_random_polynomial(params: ThresholdParams, seed: bytes) -> list[np.ndarray]:
    """a in R_{qp} (NTT form, one array per prime), expanded from a public seed with SHAKE-256: uniform in the
    NTT domain is uniform in R_{qp}. The seed hashes every party's contribution, so no party chooses a."""
    out = []
    for index, prime in enumerate(params.primes):
        mask, values, counter = (1 << prime.bit_length()) - 1, np.empty(0, dtype=U64), 0
        while values.size < params.n:
            stream = hashlib.shake_256(CRP_DOMAIN + seed + bytes([index]) + counter.to_bytes(4, "big"))
            words = np.frombuffer(stream.digest(16 * params.n), dtype="<u8").astype(U64) & U64(mask)
            values, counter = np.concatenate([values, words[words < prime]]), counter + 1
        out.append(values[: params.n])
    return out


def crp_seed(contributions: Mapping[str, bytes]) -> bytes:
    """The CRP seed: SHA-256 over every party's (id, random contribution), in id order."""
    h = hashlib.sha256(b"fedproof/crp-seed/v1\x00")
    for party in sorted(contributions):
        h.update(len(party).to_bytes(2, "big") + party.encode() + contributions[party])
    return h.digest()


@dataclass(frozen=True)
class SecretShare:
    """Party i's own secret s_i, as coefficients in {-1, 0, 1}. Never leaves the device."""

    coefficients: np.ndarray

    @classmethod
    def generate(cls, params: ThresholdParams, randomness: Randomness | None = None) -> SecretShare:
        return cls((randomness or Randomness()).ternary(params.n))

    def ntt(self, params: ThresholdParams, prime: int) -> np.ndarray:
        return ring(params.n, prime).ntt(from_signed(self.coefficients, prime))


def public_key_share(params: ThresholdParams, secret: SecretShare, crp: Sequence[np.ndarray],
                     randomness: Randomness | None = None) -> np.ndarray:
    """p0_i = -a * s_i + e_i at every prime of the key level: shape (2, N), uint64."""
    noise = np.clip((randomness or Randomness()).gaussian(KEY_NOISE_STD, params.n), -KEY_NOISE_BOUND, KEY_NOISE_BOUND)
    rows = []
    for prime, a in zip(params.primes, crp):
        r = ring(params.n, prime)
        rows.append(submod(r.ntt(from_signed(noise, prime)), r.mul(a, secret.ntt(params, prime)), prime))
    return np.stack(rows)


def check_public_key_share(params: ThresholdParams, share: np.ndarray) -> np.ndarray:
    share = np.asarray(share)
    if share.shape != (2, params.n) or share.dtype != U64 or any(np.any(share[i] >= p) for i, p in
                                                                 enumerate(params.primes)):
        raise ContextError(f"a public-key share is 2 x {params.n} residues below each prime")
    return share


class JointPublicKey:
    """pk = (sum_i p0_i, a): what clients encrypt under. It holds no secret, and no one holds its secret."""

    def __init__(self, params: ThresholdParams, p0: np.ndarray, crp: Sequence[np.ndarray]) -> None:
        self.params, self._p0, self._crp = params, p0, list(crp)
        backend = _backend(params)
        self._bytes = backend.ciphertext_bytes(backend.key_parms_id, [p0, np.stack(crp)], 1.0)
        try:
            key = backend.load(seal.PublicKey(), self._bytes)
        except (RuntimeError, ValueError) as exc:
            raise ContextError(f"SEAL refuses the joint public key: {exc}") from exc
        self._encryptor = seal.Encryptor(backend.context, key)

    @classmethod
    def combine(cls, params: ThresholdParams, shares: Sequence[np.ndarray], crp: Sequence[np.ndarray]
                ) -> JointPublicKey:
        total = np.zeros((2, params.n), dtype=U64)
        for share in shares:
            share = check_public_key_share(params, share)
            total = np.stack([addmod(total[i], share[i], p) for i, p in enumerate(params.primes)])
        return cls(params, total, crp)

    @cached_property
    def shoup_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(p0, a) prepared for products by them (``privacy.ring.mulmod_shoup``), at each level's prime."""
        p0, a = self.to_arrays()
        return tuple(np.stack([shoup(part[level], prime) for level, prime in enumerate(self.params.primes)])
                     for part in (p0, a))

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(p0, a), each (2, N) uint64: what a client keeps and reloads."""
        return self._p0, np.stack(self._crp)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the key (both halves at both primes): the key's id, signed by every party."""
        return hashlib.sha256(b"fedproof/joint-pk/v1\x00" + self._p0.astype("<u8").tobytes()
                              + np.stack(self._crp).astype("<u8").tobytes()).digest()

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        """Ciphertexts of ``values`` (1-D), N per ciphertext in the coefficients, as SEAL serializes them."""
        p = self.params
        values = seal_io.encryptable(values, p.max_abs_value)
        backend, r = _backend(p), ring(p.n, p.q)
        padded = np.zeros(p.num_ciphertexts(values.size) * p.n)
        padded[: values.size] = values
        chunks = []
        for start in range(0, padded.size, p.n):
            coefficients = np.rint(padded[start:start + p.n] * p.scale).astype(np.int64)
            plain = backend.load(seal.Plaintext(), backend.plaintext_bytes(r.ntt(from_signed(coefficients, p.q)),
                                                                           p.scale))
            ct = seal.Ciphertext()
            self._encryptor.encrypt(plain, ct)
            chunks.append(pack_ciphertext(p, _read(ct, 2 * p.n)))
        return chunks


# --------------------------------------------------------------------------------------- Shamir

def shamir_deal(params: ThresholdParams, secret: SecretShare, points: Mapping[str, int], threshold: int,
                randomness: Randomness | None = None) -> dict[str, np.ndarray]:
    """f_i(x_k) for every party k: party i's secret shared t-of-n over R_q (NTT form, mod q)."""
    if not 1 <= threshold <= len(points):
        raise ContextError(f"threshold {threshold} must be in 1..{len(points)}")
    randomness, q = randomness or Randomness(), params.q
    constant = secret.ntt(params, q)
    coefficients = [randomness.uniform_mod(q, params.n) for _ in range(threshold - 1)]
    shares = {}
    for party, x in points.items():
        value, power = constant, 1
        for c in coefficients:
            power = power * x % q
            value = addmod(value, mulmod(c, power, q), q)
        shares[party] = value
    return shares


def combine_dealt(params: ThresholdParams, dealt: Sequence[np.ndarray]) -> np.ndarray:
    """tsk_k = sum_i f_i(x_k): party k's threshold share of s."""
    total = np.zeros(params.n, dtype=U64)
    for share in dealt:
        share = np.asarray(share)
        if share.shape != (params.n,) or share.dtype != U64 or np.any(share >= params.q):
            raise ContextError(f"a dealt share is {params.n} residues below q")
        total = addmod(total, share, params.q)
    return total


def lagrange(points: Sequence[int], own: int, q: int) -> int:
    """lambda_k = prod_{j != k} x_j / (x_j - x_k) mod q: party k's weight when ``points`` decrypt together."""
    if own not in points or len(set(points)) != len(points):
        raise ContextError("the decryptors' points must be distinct and include the party's own")
    value = 1
    for x in points:
        if x != own:
            value = value * x % q * pow((x - own) % q, q - 2, q) % q
    return value


# --------------------------------------------------------------------------------------- decryption

def pack_ciphertext(params: ThresholdParams, residues: np.ndarray) -> bytes:
    """A ciphertext's 2N residues, ``data_bits`` bits each, little-endian: 15 bytes per value for 60 bits
    (SEAL's own zstd serialization of the same ciphertext takes 16.0). Two residues (2 * 60 bits) fill 15 bytes
    exactly, so packing is word arithmetic on pairs, not a bit array (a decryptor unpacks every update of a round)."""
    d = _pair_bits(params)
    pairs = np.asarray(residues, dtype="<u8").reshape(-1, 2)
    lo = pairs[:, 0] | (pairs[:, 1] << np.uint64(d))
    hi = pairs[:, 1] >> np.uint64(64 - d)
    words = np.stack([lo, hi], axis=1).astype("<u8").view(np.uint8).reshape(-1, 16)
    return words[:, : d // 4].tobytes()


def ciphertext_polys(params: ThresholdParams, chunk: bytes) -> np.ndarray:
    """(c0, c1) of one packed ciphertext, shape (2, N) uint64; refused unless exactly that many residues below q."""
    if not isinstance(chunk, (bytes, bytearray)) or len(chunk) != params.ciphertext_bytes:
        size = len(chunk) if isinstance(chunk, (bytes, bytearray)) else type(chunk).__name__
        raise CiphertextError(f"a ciphertext is {params.ciphertext_bytes} bytes for these parameters, got {size}")
    d = _pair_bits(params)
    words = np.zeros((params.n, 16), dtype=np.uint8)  # N pairs of residues, each pair in two 64-bit words
    words[:, : d // 4] = np.frombuffer(chunk, dtype=np.uint8).reshape(params.n, d // 4)
    lo, hi = words.view("<u8")[:, 0], words.view("<u8")[:, 1]
    mask = np.uint64((1 << d) - 1)
    residues = np.empty((params.n, 2), dtype=U64)
    residues[:, 0] = lo & mask
    residues[:, 1] = ((lo >> np.uint64(d)) | (hi << np.uint64(64 - d))) & mask
    if np.any(residues >= params.q):
        raise CiphertextError("corrupt ciphertext: a coefficient is not a residue mod q")
    return residues.reshape(2, params.n)


def _pair_bits(params: ThresholdParams) -> int:
    """``data_bits``, which the pair packing needs a multiple of 4 in [32, 64] (60: the scheme's)."""
    d = params.data_bits
    if d % 4 or not 32 <= d <= 64:
        raise CiphertextError(f"ciphertext packing needs data bits a multiple of 4 in [32, 64], not {d}")
    return d


def sum_ciphertexts(params: ThresholdParams, payloads: Sequence[Sequence[bytes]]) -> np.ndarray:
    """The homomorphic sum of several encrypted vectors: shape (chunks, 2, N). Refuses ragged or bad input."""
    if not payloads:
        raise CiphertextError("nothing to sum")
    total = None
    for chunks in payloads:
        polys = np.stack([ciphertext_polys(params, c) for c in chunks])
        if total is not None and polys.shape != total.shape:
            raise CiphertextError(f"encrypted vectors of {polys.shape[0]} and {total.shape[0]} ciphertexts")
        total = polys if total is None else addmod(total, polys, params.q)
    return total


def sum_digest(total: np.ndarray) -> bytes:
    """SHA-256 of a summed ciphertext (its c0 and c1 residues): what decryptors sign and the server checks."""
    return hashlib.sha256(b"fedproof/ct-sum/v1\x00" + np.ascontiguousarray(total).astype("<u8").tobytes()).digest()


RERANDOMIZE_DOMAIN = b"fedproof/rerandomize/v1\x00"
NOISE_BITS = 21
"""The re-randomizer's noise is a centered binomial with 21 + 21 coins: variance 10.5 (std 3.24, SEAL's 3.2)."""


def rerandomizer_seed(key_sha256: bytes, server_round: int, sum_sha256: bytes, merkle_root: bytes,
                      decryptors: Sequence[str]) -> bytes:
    """The seed of a request's encryption of zero: a hash of everything the decryptors verified and sign. No
    party chooses it, and a different decryptor set (or round, sum, leaves, key) gives an unrelated one."""
    h = hashlib.sha256(RERANDOMIZE_DOMAIN + key_sha256 + struct.pack(">Q", server_round) + sum_sha256 + merkle_root)
    for d in decryptors:
        h.update(struct.pack(">H", len(d.encode())) + d.encode())
    return h.digest()


def _expand(seed: bytes, index: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u ternary, e0, e1 centered binomial) for ciphertext ``index``, from SHAKE-256 of the seed: public and
    reproducible by every party (this randomness protects nobody's secret: it only takes the choice of the
    decrypted c1 away from whoever formed the sum)."""
    stream = hashlib.shake_256(seed + struct.pack(">I", index)).digest(2 * n + 2 * n * 6)
    raw = np.frombuffer(stream[: 2 * n], dtype=np.uint8)
    ternary = raw[raw < 255][:n]  # 255 = 3 * 85: unbiased mod 3
    if ternary.size < n:  # pragma: no cover - 2N bytes hold N below 255 but with probability ~2^-4000
        raise AssertionError("not enough bytes for a ternary polynomial")
    u = ternary.astype(np.int64) % 3 - 1
    bits = np.unpackbits(np.frombuffer(stream[2 * n:], dtype=np.uint8)).reshape(2, n, 48)[:, :, : 2 * NOISE_BITS]
    noise = bits[:, :, :NOISE_BITS].sum(axis=2).astype(np.int64) - bits[:, :, NOISE_BITS:].sum(axis=2)
    return u, noise[0], noise[1]


def encryption_of_zero(public_key: JointPublicKey, seed: bytes, chunks: int, parts: tuple[int, ...] = (0, 1)
                       ) -> np.ndarray:
    """``chunks`` encryptions of zero under the joint key, from a public seed: shape (chunks, len(parts), N), NTT
    form at q (``parts``: which of (c0, c1) to compute). As SEAL's ``encrypt_zero`` does: u * (p0, a) + (e0, e1) at the key level (q and the special prime p), then
    divided by p and rounded, so what it adds to a ciphertext's noise is rounding noise only."""
    params = public_key.params
    (q, p), n = params.primes, params.n
    key, key_shoup = public_key.to_arrays(), public_key.shoup_arrays
    u, e0, e1 = (np.stack(parts) for parts in zip(*(_expand(seed, index, n) for index in range(chunks))))
    noise = np.stack([(e0, e1)[part] for part in parts], axis=1)  # added in coefficient form: fewer transforms
    residues = []
    for level, prime in enumerate((q, p)):
        r = ring(n, prime)
        u_ntt = r.ntt(from_signed(u, prime))
        products = np.stack([mulmod_shoup(u_ntt, key[part][level], key_shoup[part][level], prime) for part in parts],
                            axis=1)
        residues.append(addmod(r.intt(products), from_signed(noise, prime), prime))  # coefficients mod prime
    at_q, at_p = residues
    # round(x / p) mod q from x's residues: (x_q + p//2 - ((x_p + p//2) mod p)) * p^-1 mod q
    half = p // 2
    shifted = addmod(at_p, np.full(at_p.shape, half, dtype=U64), p)  # < p < q
    p_inverse = U64(pow(p, -1, q))
    rounded = mulmod_shoup(submod(addmod(at_q, np.full(at_q.shape, half % q, dtype=U64), q), shifted, q), p_inverse,
                           shoup(p_inverse, q), q)
    return ring(n, q).ntt(rounded)


def rerandomized_c0(public_key: JointPublicKey, c0: np.ndarray, seed: bytes) -> np.ndarray:
    """What the fuser needs of :func:`rerandomize`'s result: its ``c0`` (the partials already cover ``c1'``)."""
    return addmod(c0, encryption_of_zero(public_key, seed, c0.shape[0], parts=(0,))[:, 0], public_key.params.q)


def rerandomize(public_key: JointPublicKey, total: np.ndarray, seed: bytes) -> np.ndarray:
    """``total`` + an encryption of zero derived from ``seed``: the same plaintext, and a c1 that is
    c1 + a*u + e1 for (u, e1) nobody chose. Every decryptor computes it from the sum it verified before it
    decrypts anything, and the fuser adds the same to c0 (see README, "Why the coalition learns nothing")."""
    return addmod(total, encryption_of_zero(public_key, seed, total.shape[0]), public_key.params.q)


def partial_decryption(params: ThresholdParams, share: np.ndarray, own: int, decryptors: Sequence[int],
                       total: np.ndarray, flooding_std: float, randomness: Randomness | None = None) -> np.ndarray:
    """h_k = lambda_k tsk_k * c1 + e_k for every ciphertext of ``total``: shape (chunks, N) uint64."""
    randomness, q, r = randomness or Randomness(), params.q, ring(params.n, params.q)
    weighted = mulmod(share, lagrange(decryptors, own, q), q)
    out = np.empty((total.shape[0], params.n), dtype=U64)
    for i, (_, c1) in enumerate(total):
        out[i] = r.mul(weighted, c1)
        if flooding_std:  # zero only in tests that compare against SEAL exactly
            out[i] = addmod(out[i], r.ntt(from_signed(randomness.gaussian(flooding_std, params.n), q)), q)
    return out


def fused_plaintext(params: ThresholdParams, c0: np.ndarray, partials: Sequence[np.ndarray]) -> np.ndarray:
    """c0 + sum_k h_k for every ciphertext of a sum (``c0``: its ``total[:, 0]``): the plaintexts in NTT form,
    shape (chunks, N)."""
    plain = c0
    for h in partials:
        plain = addmod(plain, h, params.q)
    return plain


def fuse(params: ThresholdParams, c0: np.ndarray, partials: Sequence[np.ndarray], length: int) -> np.ndarray:
    """The ``length`` values a sum encrypts, from its ``c0`` (``total[:, 0]``: all fusing needs of it) and t partial
    decryptions: the fused plaintext, back to coefficients, centered, / Delta."""
    q, r = params.q, ring(params.n, params.q)
    plain = fused_plaintext(params, c0, partials)
    values = [to_signed(r.intt(row), q).astype(np.float64) / params.scale for row in plain]
    return np.concatenate(values)[:length]


def check_partial(params: ThresholdParams, partial: np.ndarray, chunks: int) -> np.ndarray:
    partial = np.asarray(partial)
    if partial.shape != (chunks, params.n) or partial.dtype != U64 or np.any(partial >= params.q):
        raise CiphertextError(f"a partial decryption is {chunks} x {params.n} residues below q")
    return partial
