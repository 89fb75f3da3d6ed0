"""A classification task on grayscale images, to subclass: name the classes and the image size.

Devices bring a folder with one sub-folder per class (PNG or JPEG, converted to grayscale and the task's size) or
an ``.npz``; ``prepare`` scales pixels to [0, 1] and standardises them with the task's fixed ``pixel_mean`` and
``pixel_std`` inside the model, so the exported graph takes raw uint8 images. The model is a small tanh CNN (no
BatchNorm: Opacus trains it per sample), whatever the size: an adaptive pooling fixes the head's width.

A simulation reads the image folder ``simulation_folder`` (relative to the task's module, or the run's
``data-dir``) and splits it once (seeded, stratified) into the clients' records and a central test set.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fedproof.core.data import Dataset
from fedproof.core.model import ExtractorHead
from fedproof.core.task import Task
from fedproof.core.tasks.table import simulation_records


class ScaledPixels(nn.Module):
    """uint8 ``(n, h, w)`` images to standardised ``(n, 1, h, w)`` float32."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.pixel_mean, self.pixel_std = float(mean), float(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).div(255.0).sub(self.pixel_mean).div(self.pixel_std).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"mean={self.pixel_mean}, std={self.pixel_std}"


class SmallCNN(nn.Module):
    """conv5x5(16) - pool - conv5x5(32) - pool - adaptive pool 4x4 - fc(64) - fc(classes), tanh."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.pool, self.squeeze = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.tanh(self.conv1(x)))
        x = self.squeeze(self.pool(torch.tanh(self.conv2(x))))
        return self.fc2(torch.tanh(self.fc1(torch.flatten(x, 1))))


class ImageTask(Task):
    """Grayscale images of ``record.shape`` (height, width) in ``record.classes``."""

    models = ("cnn",)
    pixel_mean: ClassVar[float] = 0.5
    pixel_std: ClassVar[float] = 0.25
    simulation_folder: ClassVar[str] = ""
    """A folder of class folders a simulation splits among its clients (relative to the task's module)."""
    test_fraction: ClassVar[float] = 0.2

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.record.classes)

    def build(self, model: str, num_classes: int) -> ExtractorHead:
        return ExtractorHead(nn.Identity(), SmallCNN(num_classes), ScaledPixels(self.pixel_mean, self.pixel_std))

    def dataset(self, data_dir: str | None) -> Dataset:
        return simulation_records(self, data_dir, self.simulation_folder, self.test_fraction,
                                  "set its simulation_folder, or the run's data-dir to a folder of class folders")
