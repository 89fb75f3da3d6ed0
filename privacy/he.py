"""CKKS secure aggregation: keys, encryption, ciphertext sums and decryption, on SEAL through ``tenseal.sealapi``.

Why raw SEAL rather than TenSEAL's ``CKKSVector``: three choices that TenSEAL's high-level API cannot make, each
of which cuts the bytes on the wire, measured in ``benchmarks/he_overhead.py``:

* **Seeded symmetric encryption.** Clients share one secret key, so they encrypt symmetrically; SEAL then
  serializes the ciphertext's uniformly random half as a 64-byte seed. That halves the upload.
* **Two reals per slot.** CKKS slots are complex: the first half of a chunk goes in the real parts and the
  second half in the imaginary parts, so one ciphertext of degree N carries N reals, not N/2.
* **One 50-bit prime.** Aggregation is additions only (depth 0: no rescaling, no relinearization or Galois
  keys), so the modulus is sized for precision alone: scale 2^25 and 2^22 of headroom for the sum.

Together: about 7.2 bytes per parameter up (float32 is 4) and 14.4 down (a sum is not seeded), against 57.6 for
NVIDIA FLARE's defaults. Error bounds are worst-case, not statistical: SEAL's fresh noise has coefficients of at
most 21 in absolute value and encoding rounds each coefficient by at most 1/2, so a sum of K fresh ciphertexts
decodes within ``K * N * 21.5 / 2**scale_bits`` of the exact sum (:meth:`HEParams.error_bound`).

Roles: :class:`SecretContext` (clients: encrypt, decrypt) and :class:`PublicContext` (the server: parameters
only, no key of any kind, so it can add ciphertexts and do nothing else). Context files are our own small
binary format around SEAL's serialization, written 0600; every loader checks sizes before parsing, and nothing
is ever unpickled.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from privacy import seal_io
from privacy.errors import CiphertextError, ContextError, SecretKeyRefused

MAGIC, VERSION = b"FPHE", 1
PUBLIC, SECRET = 0, 1
_HEADER = struct.Struct(">4sBBBBBd")  # magic, version, kind, log2 N, modulus bits, scale bits, max |delta|
_LENGTH = struct.Struct(">I")
FRESH_NOISE_BOUND = 21.0
"""Largest |coefficient| of SEAL's fresh encryption noise (centered binomial; a clipped Gaussian stays below)."""
CLIENT_CONTEXT, SERVER_CONTEXT = "he-client.ctx", "he-server.ctx"


@dataclass(frozen=True)
class HEParams:
    """The CKKS scheme every party of a run shares; stored in each context file."""

    poly_modulus_degree: int = 4096
    modulus_bits: int = 50
    """Bits of the single ciphertext prime: precision (scale) plus headroom for the sum."""
    scale_bits: int = 25
    max_abs_delta: float = 4.0
    """Largest |update - global| per parameter a client may encrypt; bounds the sum to prevent overflow."""

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in (2048, 4096, 8192, 16384, 32768):
            raise ContextError(f"poly_modulus_degree must be a power of two in 2048..32768, got {n}")
        limit = min(60, seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128))
        if not 20 <= self.modulus_bits <= limit:
            raise ContextError(f"modulus_bits must be in 20..{limit} for degree {n} at 128-bit security")
        if not 10 <= self.scale_bits <= self.modulus_bits - 8:
            raise ContextError("scale_bits must be at least 10 and leave 8 bits of headroom below modulus_bits")
        if not (self.max_abs_delta > 0 and math.isfinite(self.max_abs_delta)):
            raise ContextError("max_abs_delta must be a positive number")

    @property
    def values_per_ciphertext(self) -> int:
        return self.poly_modulus_degree  # N/2 complex slots, two reals each

    @property
    def value_capacity(self) -> float:
        """Largest |value| a sum may reach and still decode: the encoded coefficients stay below q/2."""
        return 2.0 ** (self.modulus_bits - self.scale_bits - 3)

    @property
    def max_total_examples(self) -> int:
        """Most examples one sum of ``n_k * delta_k`` may weigh in total without risking overflow."""
        return int(self.value_capacity / self.max_abs_delta)

    @property
    def max_ciphertext_bytes(self) -> int:
        """Upper bound of one serialized ciphertext: two uncompressed polynomials plus SEAL's header."""
        return 2 * self.poly_modulus_degree * 8 + 256

    def error_bound(self, num_summed: int) -> float:
        """Worst-case absolute error per value of a decrypted sum of ``num_summed`` fresh ciphertexts."""
        return max(num_summed, 1) * self.poly_modulus_degree * (FRESH_NOISE_BOUND + 0.5) / 2.0**self.scale_bits

    def num_ciphertexts(self, length: int) -> int:
        return -(-length // self.values_per_ciphertext)

    def _header(self, kind: int) -> bytes:
        log_n = self.poly_modulus_degree.bit_length() - 1
        return _HEADER.pack(MAGIC, VERSION, kind, log_n, self.modulus_bits, self.scale_bits, self.max_abs_delta)


class _Seal:
    """A SEAL context for some parameters, and SEAL's file-only save/load turned into bytes."""

    def __init__(self, params: HEParams) -> None:
        self.params = params
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, [params.modulus_bits]))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if not self.context.parameters_set():
            raise ContextError(f"SEAL rejects the CKKS parameters {params}")
        self.scale = 2.0**params.scale_bits

    to_bytes = staticmethod(seal_io.save)

    def load(self, obj, data: bytes):
        return seal_io.load(self.context, obj, data)

    def load_ciphertext(self, data: bytes) -> seal.Ciphertext:
        if not isinstance(data, (bytes, bytearray)) or not 16 <= len(data) <= self.params.max_ciphertext_bytes:
            size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise CiphertextError(
                f"a ciphertext must be 16..{self.params.max_ciphertext_bytes} bytes for these parameters, got {size}"
            )
        try:
            ct = self.load(seal.Ciphertext(), bytes(data))
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError(f"corrupt or truncated ciphertext: {exc}") from exc
        if ct.size() != 2 or ct.coeff_modulus_size() != 1 or not ct.is_ntt_form() or ct.scale != self.scale:
            raise CiphertextError("ciphertext does not match the run's CKKS parameters (size, level or scale)")
        return ct


def _parse_header(data: bytes, what: str) -> tuple[int, HEParams, bytes]:
    if not isinstance(data, (bytes, bytearray)) or len(data) < _HEADER.size:
        raise ContextError(f"{what}: too short to be a fedproof CKKS context")
    magic, version, kind, log_n, bits, scale_bits, max_delta = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind not in (PUBLIC, SECRET) or not 11 <= log_n <= 15:
        raise ContextError(f"{what}: not a fedproof CKKS context (version {VERSION})")
    return kind, HEParams(1 << log_n, bits, scale_bits, max_delta), bytes(data[_HEADER.size :])


def _read_file(path: Path, limit: int) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ContextError(f"no CKKS context at {path} (create a key set with `fedproof keys init`)")
    if path.stat().st_size > limit:
        raise ContextError(f"{path}: {path.stat().st_size} bytes, larger than any context ({limit} bytes)")
    return path.read_bytes()


_MAX_CONTEXT_FILE = 1 << 20


class PublicContext:
    """The server's context: CKKS parameters and no key at all. It can sum ciphertexts; it cannot decrypt."""

    def __init__(self, params: HEParams) -> None:
        self.params = params
        self._seal = _Seal(params)

    def to_bytes(self) -> bytes:
        return self.params._header(PUBLIC)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "public context") -> PublicContext:
        kind, params, rest = _parse_header(data, what)
        if kind == SECRET:
            raise SecretKeyRefused(
                f"{what} holds a secret key: the server only loads public contexts ({SERVER_CONTEXT}); "
                f"keep {CLIENT_CONTEXT} on the clients"
            )
        if rest:
            raise ContextError(f"{what}: {len(rest)} unexpected trailing bytes")
        return cls(params)

    @classmethod
    def load(cls, path: Path) -> PublicContext:
        return cls.from_bytes(_read_file(path, _MAX_CONTEXT_FILE), str(path))

    def new_sum(self, length: int) -> EncryptedSum:
        return EncryptedSum(self, length)


class EncryptedSum:
    """A running sum of encrypted vectors of ``length`` values, added one update at a time (memory stays flat).

    :meth:`add` validates every chunk of an update before adding any, so a bad update leaves the sum untouched.
    """

    def __init__(self, public: PublicContext, length: int) -> None:
        if length < 1:
            raise CiphertextError("an encrypted vector must hold at least one value")
        self.params, self.length, self.count = public.params, length, 0
        self._seal = public._seal
        self._evaluator = seal.Evaluator(self._seal.context)
        self._acc: list[seal.Ciphertext] | None = None

    def add(self, chunks: Sequence[bytes]) -> None:
        expected = self.params.num_ciphertexts(self.length)
        if len(chunks) != expected:
            raise CiphertextError(f"expected {expected} ciphertexts for {self.length} values, got {len(chunks)}")
        loaded = [self._seal.load_ciphertext(chunk) for chunk in chunks]
        if self._acc is None:
            self._acc = loaded
        else:
            for acc, ct in zip(self._acc, loaded):
                self._evaluator.add_inplace(acc, ct)
        self.count += 1

    def serialize(self) -> list[bytes]:
        if self._acc is None:
            raise CiphertextError("nothing was added to the sum")
        return [_Seal.to_bytes(ct) for ct in self._acc]


class SecretContext:
    """A client's context: the shared CKKS secret key. Encrypts updates and decrypts sums."""

    def __init__(self, params: HEParams, secret_key: seal.SecretKey) -> None:
        self.params = params
        self._seal = _Seal(params)
        self._key = secret_key
        self._encryptor = seal.Encryptor(self._seal.context, secret_key)
        self._decryptor = seal.Decryptor(self._seal.context, secret_key)
        self._encoder = seal.CKKSEncoder(self._seal.context)

    @classmethod
    def generate(cls, params: HEParams | None = None) -> SecretContext:
        params = params or HEParams()
        return cls(params, seal.KeyGenerator(_Seal(params).context).secret_key())

    def public(self) -> PublicContext:
        return PublicContext(self.params)

    def to_bytes(self) -> bytes:
        key = _Seal.to_bytes(self._key)
        return self.params._header(SECRET) + _LENGTH.pack(len(key)) + key

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "secret context") -> SecretContext:
        kind, params, rest = _parse_header(data, what)
        if kind != SECRET:
            raise ContextError(f"{what} holds no secret key: clients need {CLIENT_CONTEXT}, not {SERVER_CONTEXT}")
        if len(rest) < _LENGTH.size:
            raise ContextError(f"{what}: truncated")
        (size,) = _LENGTH.unpack_from(rest)
        if size != len(rest) - _LENGTH.size or size > params.max_ciphertext_bytes:
            raise ContextError(f"{what}: secret key length {size} does not match the file")
        backend = _Seal(params)
        try:
            key = backend.load(seal.SecretKey(), rest[_LENGTH.size :])
        except (RuntimeError, ValueError) as exc:
            raise ContextError(f"{what}: corrupt secret key ({exc})") from exc
        return cls(params, key)

    @classmethod
    def load(cls, path: Path) -> SecretContext:
        return cls.from_bytes(_read_file(path, _MAX_CONTEXT_FILE), str(path))

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        """Seeded symmetric ciphertexts of ``values`` (1-D), ``values_per_ciphertext`` reals per ciphertext."""
        values = seal_io.encryptable(values, self.params.value_capacity)
        per, half = self.params.values_per_ciphertext, self.params.values_per_ciphertext // 2
        padded = np.zeros(self.params.num_ciphertexts(values.size) * per)
        padded[: values.size] = values
        chunks = []
        for start in range(0, padded.size, per):
            block = padded[start : start + per]
            plain = seal.Plaintext()
            self._encoder.encode((block[:half] + 1j * block[half:]).tolist(), self._seal.scale, plain)
            chunks.append(_Seal.to_bytes(self._encryptor.encrypt_symmetric(plain)))
        return chunks

    def decrypt(self, chunks: Sequence[bytes], length: int) -> np.ndarray:
        """The ``length`` reals held by ``chunks`` (a fresh ciphertext or a sum), as float64."""
        expected = self.params.num_ciphertexts(length)
        if length < 1 or len(chunks) != expected:
            raise CiphertextError(f"expected {expected} ciphertexts for {length} values, got {len(chunks)}")
        half = self.params.values_per_ciphertext // 2
        parts = []
        for chunk in chunks:
            plain = seal.Plaintext()
            self._decryptor.decrypt(self._seal.load_ciphertext(chunk), plain)
            slots = np.asarray(self._encoder.decode_complex(plain))
            parts += [slots.real[:half], slots.imag[:half]]
        return np.concatenate(parts)[:length]


def round_for_release(values: np.ndarray, params: HEParams, num_summed: int) -> np.ndarray:
    """Round a decrypted sum to a power-of-two grid no finer than its error bound before it leaves a client.

    A raw CKKS decryption carries the encryption noise, and noise handed to others leaks information about the
    secret key (Li and Micciancio, EUROCRYPT 2021). Rounding to a grid at the error bound hides those low bits
    (a mitigation, not a proof) and costs at most half a grid step: the released value is within
    ``release_tolerance`` of the exact sum.
    """
    step = 2.0 ** math.ceil(math.log2(params.error_bound(num_summed)))
    return np.round(values / step) * step


def release_tolerance(params: HEParams, num_summed: int) -> float:
    """Worst-case |released - exact| per value: the error bound plus half a rounding step (at most 2x the bound)."""
    return params.error_bound(num_summed) + 2.0 ** math.ceil(math.log2(params.error_bound(num_summed))) / 2
