"""Polynomials of Z_q[X]/(X^N + 1) in numpy, in exactly SEAL's NTT form, for the threshold layer.

SEAL keeps keys and ciphertexts in NTT form: each polynomial as its N evaluations at the odd powers of a
primitive 2N-th root of unity psi, in bit-reversed order. Products of polynomials are then pointwise
products, which is all the multiparty protocols need (Mouchet et al., PETS 2021, section 4: every share
operation is a sum or product of ring elements). What SEAL does not expose to Python, and this module
supplies:

* the transform itself, to move noise and key polynomials sampled coefficient-wise into SEAL's form
  (``tests/test_threshold.py`` checks :meth:`Ring.ntt` against SEAL's own ``transform_to_ntt``);
* products modulo a prime of up to 60 bits, vectorized: numpy has no 128-bit integers, so the quotient of
  ``a * b // q`` is estimated in 80-bit extended precision (64-bit mantissa, exact to within one for
  ``a, b < q < 2^62``) and the remainder computed exactly in wrapping 64-bit arithmetic, then corrected.

SEAL's conventions, as in its ``util/ntt.cpp``: psi is the smallest primitive 2N-th root of unity modulo q;
the forward transform is Cooley-Tukey with ``root_powers[bitrev(i)] = psi^i``, group ``i`` of stage ``m``
using ``root_powers[m + i]``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

U64 = np.uint64


def mulmod(a: np.ndarray, b: np.ndarray | int, q: int) -> np.ndarray:
    """``a * b mod q`` elementwise, for uint64 arrays (or a scalar ``b``) with entries below ``q < 2^62``."""
    a = np.asarray(a, dtype=U64)
    b = np.asarray(b, dtype=U64)
    quotient = np.floor(a.astype(np.longdouble) * b.astype(np.longdouble) / np.longdouble(q)).astype(U64)
    with np.errstate(over="ignore"):
        remainder = (a * b - quotient * U64(q)).view(np.int64)  # exact: the true value lies in (-2q, 2q)
    remainder = np.where(remainder < 0, remainder + q, remainder)
    remainder = np.where(remainder >= q, remainder - q, remainder)
    return remainder.astype(U64)


_LOW32, _SHIFT32 = U64(0xFFFFFFFF), U64(32)


def _high_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The high 64 bits of the 128-bit products ``a * b`` (uint64), from 32-bit halves: numpy has no 128-bit
    integers."""
    a0, a1, b0, b1 = a & _LOW32, a >> _SHIFT32, b & _LOW32, b >> _SHIFT32
    low, cross0, cross1 = a0 * b0, a0 * b1, a1 * b0
    carry = (low >> _SHIFT32) + (cross0 & _LOW32) + (cross1 & _LOW32)
    return a1 * b1 + (cross0 >> _SHIFT32) + (cross1 >> _SHIFT32) + (carry >> _SHIFT32)


def shoup(w: np.ndarray | int, q: int) -> np.ndarray:
    """``floor(w * 2^64 / q)`` for constants ``w < q``: what :func:`mulmod_shoup` multiplies by."""
    return np.array([(int(x) << 64) // q for x in np.ravel(w)], dtype=U64).reshape(np.shape(w))


def mulmod_shoup(a: np.ndarray, w: np.ndarray, w_shoup: np.ndarray, q: int) -> np.ndarray:
    """``a * w mod q`` for a constant ``w < q`` with ``w_shoup = shoup(w, q)`` (Shoup's method, as SEAL's NTT
    multiplies by its roots): ``a * w - floor(a * w_shoup / 2^64) * q`` lies in [0, 2q), exact in 64-bit wrapping
    arithmetic since 2q < 2^64. Integer work only: three times faster than :func:`mulmod`'s long doubles."""
    q64 = U64(q)
    with np.errstate(over="ignore"):
        r = np.asarray(a, dtype=U64) * w - _high_product(np.asarray(a, dtype=U64), w_shoup) * q64
        return np.minimum(r, r - q64)


def addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    total = np.asarray(a, dtype=U64) + np.asarray(b, dtype=U64)  # both < q < 2^62: no wrap
    with np.errstate(over="ignore"):
        return np.minimum(total, total - U64(q))  # below q, total - q wraps past 2^63: the minimum is total


def submod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        difference = np.asarray(a, dtype=U64) - np.asarray(b, dtype=U64)  # wraps when a < b
        return np.minimum(difference, difference + U64(q))  # then + q wraps back into [0, q)


def from_signed(values: np.ndarray, q: int) -> np.ndarray:
    """Signed integers (int64, |v| < q) as residues in [0, q)."""
    values = np.asarray(values, dtype=np.int64)
    return np.where(values < 0, values + q, values).astype(U64)


def to_signed(residues: np.ndarray, q: int) -> np.ndarray:
    """Residues in [0, q) as the centered integers in (-q/2, q/2], int64."""
    residues = np.asarray(residues, dtype=U64)
    return np.where(residues > q // 2, residues.astype(np.int64) - q, residues.astype(np.int64))


class Ring:
    """Z_q[X]/(X^N + 1) for one prime ``q``, with SEAL's negacyclic NTT (see the module docstring)."""

    def __init__(self, n: int, q: int) -> None:
        if n < 2 or n & (n - 1) or (q - 1) % (2 * n):
            raise ValueError(f"q={q} does not support a negacyclic NTT of size {n}")
        self.n, self.q, self.log_n = n, q, n.bit_length() - 1
        psi = _minimal_primitive_root(2 * n, q)
        powers = [1] * n
        for i in range(1, n):
            powers[i] = powers[i - 1] * psi % q
        rev = [_reverse_bits(i, self.log_n) for i in range(n)]
        roots = [0] * n
        for i in range(n):
            roots[rev[i]] = powers[i]
        self._roots = np.array(roots, dtype=U64)
        self._inverse_roots = np.array([pow(r, q - 2, q) for r in roots], dtype=U64)
        self._n_inverse = pow(n, q - 2, q)
        self._roots_shoup, self._inverse_roots_shoup = shoup(self._roots, q), shoup(self._inverse_roots, q)
        self._n_inverse_shoup = shoup(np.array(self._n_inverse, dtype=U64), q)

    def ntt(self, coefficients: np.ndarray) -> np.ndarray:
        """SEAL's NTT form of a polynomial given by its coefficients (residues in [0, q)); a (..., N) array
        transforms each row."""
        values = np.array(coefficients, dtype=U64)
        shape = values.shape
        values = values.reshape(-1, self.n)
        m, gap = 1, self.n // 2
        while m < self.n:
            block = values.reshape(-1, m, 2, gap)
            x, y = block[:, :, 0, :], mulmod_shoup(block[:, :, 1, :], self._roots[m:2 * m, None],
                                                   self._roots_shoup[m:2 * m, None], self.q)
            values = np.stack([addmod(x, y, self.q), submod(x, y, self.q)], axis=2).reshape(-1, self.n)
            m, gap = m * 2, gap // 2
        return values.reshape(shape if len(shape) > 1 else (self.n,))

    def intt(self, evaluations: np.ndarray) -> np.ndarray:
        """The coefficients of a polynomial in SEAL's NTT form: :meth:`ntt` undone stage by stage (row-wise)."""
        values = np.array(evaluations, dtype=U64)
        shape = values.shape
        values = values.reshape(-1, self.n)
        m, gap = self.n // 2, 1
        while m >= 1:
            block = values.reshape(-1, m, 2, gap)
            x, y = block[:, :, 0, :], block[:, :, 1, :]
            values = np.stack([addmod(x, y, self.q),
                               mulmod_shoup(submod(x, y, self.q), self._inverse_roots[m:2 * m, None],
                                            self._inverse_roots_shoup[m:2 * m, None], self.q)],
                              axis=2).reshape(-1, self.n)
            m, gap = m // 2, gap * 2
        return mulmod_shoup(values, U64(self._n_inverse), self._n_inverse_shoup,
                            self.q).reshape(shape if len(shape) > 1 else (self.n,))

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The product of two polynomials in NTT form (pointwise)."""
        return mulmod(a, b, self.q)


@lru_cache(maxsize=8)
def ring(n: int, q: int) -> Ring:
    return Ring(n, q)


def _reverse_bits(value: int, bits: int) -> int:
    return int(format(value, f"0{bits}b")[::-1], 2) if bits else 0


def _minimal_primitive_root(order: int, q: int) -> int:
    """The smallest primitive ``order``-th root of unity modulo the prime ``q`` (``order`` a power of two),
    as SEAL's ``try_minimal_primitive_root`` finds it: the least of the odd powers of any primitive root."""
    cofactor = (q - 1) // order
    for g in range(2, 1 << 16):
        root = pow(g, cofactor, q)
        if pow(root, order // 2, q) == q - 1:  # order exactly `order`
            break
    else:  # pragma: no cover - every prime = 1 mod order has one among small generators
        raise ValueError(f"no primitive {order}-th root of unity modulo {q}")
    square, best, current = root * root % q, root, root
    for _ in range(order // 2 - 1):
        current = current * square % q
        best = min(best, current)
    return best
