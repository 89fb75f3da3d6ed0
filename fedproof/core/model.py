"""The shared task's models for 28x28 grayscale images: a fixed feature extractor, then a trained head.

Every model is an :class:`ExtractorHead`: ``extractor`` has no parameters and nothing in its ``state_dict`` (its
features cost no privacy and can be computed once per dataset, :func:`fedproof.core.features.features`), ``head`` is what
clients train and the federation exchanges. Neither uses BatchNorm (batch statistics mix samples, which Opacus
rejects).

- ``scatternet`` (default): 2D wavelet scattering, J=2 (81 x 7 x 7 coefficients, :mod:`fedproof.core.scattering`), then
  GroupNorm (27 groups, no affine) and one linear layer: 39,700 parameters. Tramer & Boneh (ICLR 2021) measured
  it as the best DP-SGD model on Fashion-MNIST (89.7% at epsilon 3, centrally); measured here it is also what
  reaches >= 86% in our 10-client federation at epsilon 3 (benchmarks/privacy_utility.py).
- ``cnn``: the earlier end-to-end tanh CNN (~65k parameters; tanh, a "tempered sigmoid", learns better than
  ReLU under DP-SGD: Papernot et al., AAAI'21); no extractor.
"""

from __future__ import annotations

import torch
from torch import nn

from fedproof.base.errors import ConfigError
from fedproof.core.scattering import Scattering2D

IMAGE_SHAPE = (1, 28, 28)


class ExtractorHead(nn.Module):
    """``head(extractor(x))``: a fixed extractor (no parameters, no state) and a trained head; ``x`` is what
    ``prepare`` (fixed too: no parameters, no state) makes of raw records. ``prepare`` goes into the exported graph,
    so a device sends raw records and runs no preprocessing code that could drift from training's."""

    def __init__(self, extractor: nn.Module, head: nn.Module, prepare: nn.Module | None = None) -> None:
        super().__init__()
        self.extractor = extractor
        self.head = head
        self.prepare = prepare if prepare is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))

    def predict_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Outputs for raw records: what the exported graph computes."""
        return self(self.prepare(raw))


#: Fashion-MNIST pixel mean and standard deviation (on [0, 1]), used to standardise inputs.
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


class StandardizedImages(nn.Module):
    """uint8 ``(n, 28, 28)`` images to standardised ``(n, 1, 28, 28)`` float32 (Fashion-MNIST's pixel statistics)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).div(255.0).sub(PIXEL_MEAN).div(PIXEL_STD).unsqueeze(1)


class CNNHead(nn.Module):
    """conv5x5(16) - pool - conv5x5(32) - pool - fc(64) - fc(classes), tanh."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.fc1 = nn.Linear(32 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x)))
        x = torch.tanh(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def scatternet(num_classes: int = 10) -> ExtractorHead:
    scattering = Scattering2D(J=2, size=IMAGE_SHAPE[-1])
    channels, side = scattering.channels, IMAGE_SHAPE[-1] // 4
    head = nn.Sequential(
        nn.GroupNorm(27, channels, affine=False),  # per sample, so DP-compatible; Tramer & Boneh's 27 groups
        nn.Flatten(),
        nn.Linear(channels * side * side, num_classes),
    )
    return ExtractorHead(scattering, head, StandardizedImages())


def cnn(num_classes: int = 10) -> ExtractorHead:
    return ExtractorHead(nn.Identity(), CNNHead(num_classes), StandardizedImages())


_BUILDERS = {"scatternet": scatternet, "cnn": cnn}


def make_model(name: str = "", num_classes: int = 10, seed: int | None = None) -> ExtractorHead:
    """A fresh model; with ``seed`` its initial weights are reproducible."""
    name = name or "scatternet"
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(_BUILDERS)}")
    if seed is None:
        return _BUILDERS[name](num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
