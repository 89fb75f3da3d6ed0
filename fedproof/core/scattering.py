"""2D wavelet scattering (Mallat), computed with matrix products so that it exports to ONNX and runs on the edge.

Why scattering: its features are fixed (no training, so no privacy cost) and linearly separable enough that a
linear head on them is the strongest known DP-SGD model on Fashion-MNIST (89.7% at epsilon 3, Tramer & Boneh,
ICLR 2021). Why not kymatio's own module: it convolves through ``torch.fft``, which neither the ONNX exporter nor
onnxruntime's quantizer handles, so the model could not reach a device as one graph.

This module computes exactly what kymatio 0.3's ``Scattering2D(J, shape, L, max_order=2)`` computes, with kymatio's
Morlet filter bank (``kymatio.scattering2d.filter_bank``: plain numpy, importable without kymatio's torch frontends,
whose 3D module no longer imports on SciPy >= 1.17): reflect-pad, then every "circular convolution with a
Fourier-domain filter, then subsample by k" is ``G_k (F X F^T * h) G_k^T`` with the DFT matrix ``F`` and the rows of
the inverse DFT kept by the subsampling, ``G_k``; complex values are carried as (real, imaginary) pairs. The
equivalence with kymatio is a test (tests/test_scattering.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn


def padded_size(size: int, J: int) -> int:
    """kymatio's padded size (``scattering2d.utils.compute_padding``)."""
    return ((size + 2**J) // 2**J + 1) * 2**J


@functools.lru_cache(maxsize=4)
def _filter_bank(size: int, J: int, L: int) -> tuple[np.ndarray, list[np.ndarray], list[list[np.ndarray]]]:
    """kymatio's filters in Fourier for a ``size`` x ``size`` padded input: phi at each resolution, and psi (ordered
    by scale, then angle, as kymatio orders its paths) at each resolution."""
    from kymatio.scattering2d.filter_bank import filter_bank  # numpy + scipy.fft only

    bank = filter_bank(size, size, J, L)
    phi = [np.asarray(level, np.float64) for level in bank["phi"]["levels"]]
    psi = [[np.asarray(level, np.float64) for level in f["levels"]] for f in bank["psi"]]
    return phi, psi  # type: ignore[return-value]


def _duplicated(filters: np.ndarray) -> torch.Tensor:
    """A real Fourier-domain filter laid out for ``[re, im]`` spectra: the same values over both halves."""
    return torch.tensor(np.concatenate([filters, filters], axis=-1), dtype=torch.float32)


def _dft(size: int) -> np.ndarray:
    k = np.arange(size)
    return np.exp(-2j * np.pi * np.outer(k, k) / size)


def _complex_block(m: np.ndarray) -> torch.Tensor:
    """``[[Re M, Im M], [-Im M, Re M]]``: ``[re, im] @ block`` is the complex product ``(re + i im) @ M``, in one
    matrix product."""
    return torch.tensor(np.block([[m.real, m.imag], [-m.imag, m.real]]), dtype=torch.float32)


def _times(x: torch.Tensor, block: torch.Tensor, real: bool = False) -> torch.Tensor:
    """``x @ M`` on the last axis, complex values as ``[re, im]`` halves of the last axis (``real``: ``x`` is real,
    ``x @ [Re M, Im M]``); then transposed, so two calls apply ``M`` on both axes: ``M^T X M``."""
    x = x @ (block[: block.shape[0] // 2] if real else block)
    n = x.shape[-1] // 2
    return torch.cat([x[..., :n].transpose(-1, -2), x[..., n:].transpose(-1, -2)], dim=-1)


class _Spectral(nn.Module):
    """Fourier transforms at one resolution, as products with one large matrix each (batched small matrix
    products are several times slower): forward ``F X F`` of a real input, and inverse with subsampling by each
    factor the scattering needs, ``G_k Z G_k^T`` (``G_k``: every k-th row of ``conj(F) / size``). Complex values
    travel as ``[re, im]`` halves of the last axis."""

    def __init__(self, size: int, factors: tuple[int, ...]) -> None:
        super().__init__()
        F = _dft(size)
        self.register_buffer("f", _complex_block(F), persistent=False)
        for k in factors:
            self.register_buffer(f"g{k}", _complex_block((np.conj(F)[::k] / size).T), persistent=False)

    def forward_real(self, x: torch.Tensor) -> torch.Tensor:
        """DFT of a real ``(..., n, n)`` input: ``(..., n, 2n)``."""
        return _times(_times(x, self.f, real=True), self.f)

    def inverse(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse DFT of ``z``, keeping every k-th row and column: real and imaginary parts."""
        g = getattr(self, f"g{k}")
        out = _times(_times(z, g), g)
        n = out.shape[-1] // 2
        return out[..., :n], out[..., n:]


class Scattering2D(nn.Module):
    """Second-order scattering of ``(batch, 1, size, size)`` images: ``(batch, 1 + J L + L^2 J (J-1) / 2, size / 2^J,
    size / 2^J)`` coefficients in kymatio's order (order 0; order 1 by scale then angle; order 2 by the first path,
    then the second). Has no parameters and nothing in its ``state_dict``: the filters are constants of the code."""

    def __init__(self, J: int = 2, size: int = 28, L: int = 8) -> None:
        super().__init__()
        if size % 2**J or 2**J > size:
            raise ValueError(f"scattering needs a size divisible by 2^J = {2**J}, got {size}")
        self.J, self.L, self.size = J, L, size
        padded = padded_size(size, J)
        self.pad = (padded - size) // 2
        phi, psi = _filter_bank(padded, J, L)
        # one spectral module per resolution 2^-r (r < J); each inverse subsamples by one of 2^0 .. 2^J
        self.spectral = nn.ModuleList(
            _Spectral(padded // 2**r, tuple(2**k for k in range(J - r + 1))) for r in range(J)
        )
        for r in range(J):
            self.register_buffer(f"phi{r}", _duplicated(phi[r]), persistent=False)
        for j in range(J):  # psi of scale j at each resolution r it is applied at (r = 0, and r = j1 < j): L angles
            for r in range(len(psi[j * L])):
                levels = np.stack([psi[j * L + t][r] for t in range(L)])
                self.register_buffer(f"psi{j}_{r}", _duplicated(levels), persistent=False)

    def extra_repr(self) -> str:
        return f"J={self.J}, size={self.size}, L={self.L}"

    @property
    def channels(self) -> int:
        return 1 + self.J * self.L + self.L**2 * self.J * (self.J - 1) // 2

    def _lowpass(self, spectrum: torch.Tensor, r: int) -> torch.Tensor:
        """Order-k output from a spectrum at resolution r: times phi, down to 2^-J, real part, border cropped."""
        out, _ = self.spectral[r].inverse(spectrum * getattr(self, f"phi{r}"), 2 ** (self.J - r))
        return out[..., 1:-1, 1:-1]

    def _wavelets(self, spectrum: torch.Tensor, j: int, r: int) -> torch.Tensor:
        """|x * psi_(j, theta)| for the L angles, from x's spectrum at resolution r; the result is at resolution j."""
        re, im = self.spectral[r].inverse(spectrum.unsqueeze(-3) * getattr(self, f"psi{j}_{r}"), 2 ** (j - r))
        return torch.sqrt(re * re + im * im)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        x = nn.functional.pad(images.reshape(batch, 1, self.size, self.size), [self.pad] * 4, mode="reflect")[:, 0]
        spectrum = self.spectral[0].forward_real(x)
        outputs = [self._lowpass(spectrum, 0).unsqueeze(1)]
        second = []
        for j1 in range(self.J):
            u1 = self._wavelets(spectrum, j1, 0)  # (batch, L, n / 2^j1, n / 2^j1)
            u1_spectrum = self.spectral[j1].forward_real(u1)
            outputs.append(self._lowpass(u1_spectrum, j1))
            paths = []  # kymatio's order: by first path (angle), then second path (scale, then angle)
            for j2 in range(j1 + 1, self.J):
                u2 = self._wavelets(u1_spectrum, j2, j1)  # (batch, L first angles, L second angles, ...)
                paths.append(self._lowpass(self.spectral[j2].forward_real(u2), j2))
            if paths:
                out = torch.cat(paths, dim=2)
                second.append(out.reshape(batch, -1, *out.shape[-2:]))
        return torch.cat(outputs + second, dim=1)
