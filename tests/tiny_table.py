"""A task defined outside fedproof, as a user writes one in their own package: a small MLP on generated rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from fedproof.core.data import Dataset
from fedproof.core.loaders import RecordSpec
from fedproof.core.model import ExtractorHead
from fedproof.core.task import Task


def rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


class TinyTable(Task):
    name = "tiny-table"
    record = RecordSpec(shape=(4,), dtype="float32", columns=("a", "b", "c", "d"), label="y", classes=("no", "yes"))
    models = ("mlp",)
    num_classes = 2

    def build(self, model: str, num_classes: int) -> ExtractorHead:
        return ExtractorHead(nn.Identity(), nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, num_classes)))

    def dataset(self, data_dir: str | None) -> Dataset:
        train_x, train_y = rows(600, 0)
        test_x, test_y = rows(200, 1)
        return Dataset(self.name, train_x, train_y, test_x, test_y, 2, Path("generated"), "tiny-table-v1")
