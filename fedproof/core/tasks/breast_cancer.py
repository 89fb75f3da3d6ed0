"""Tabular medical records: the Wisconsin breast-cancer set (569 patients, 30 features of a cell-nucleus image,
malignant or benign), which ships inside scikit-learn: no download.

The example of a task of another kind than images (``examples/breast_cancer/``): a table whose rows a hospital
keeps as CSV or Parquet, a small model Opacus trains per sample, and a ``prepare`` that standardises each feature
with fixed reference statistics. Those statistics are part of the task's code, as Fashion-MNIST's pixel mean is:
they are computed here from the public set's training split, so no device's data sets them, and they are baked
into the exported graph, so a device sends raw rows.

The set is split once (seed 0, stratified): 80% for the hospitals of a simulation, 20% as the central test set.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from fedproof.core.data import Dataset
from fedproof.core.loaders import RecordSpec
from fedproof.core.tasks.table import TableTask

TEST_FRACTION = 0.2
CLASSES = ("malignant", "benign")


@functools.lru_cache(maxsize=1)
def _records() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=TEST_FRACTION, random_state=0, stratify=y)
    return train_x, train_y, test_x, test_y



class BreastCancer(TableTask):
    name = "breast-cancer"
    record = RecordSpec(shape=(30,), dtype="float32", columns=(
        "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness", "mean compactness",
        "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension", "radius error",
        "texture error", "perimeter error", "area error", "smoothness error", "compactness error", "concavity error",
        "concave points error", "symmetry error", "fractal dimension error", "worst radius", "worst texture",
        "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
        "worst concave points", "worst symmetry", "worst fractal dimension"), label="diagnosis", classes=CLASSES)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """From the public set's training split (scikit-learn ships it to every party alike)."""
        train_x = _records()[0]
        return train_x.mean(0), train_x.std(0)

    def dataset(self, data_dir: str | None) -> Dataset:
        train_x, train_y, test_x, test_y = _records()
        identity = hashlib.sha256(train_x.tobytes() + train_y.tobytes()).hexdigest()
        return Dataset(self.name, train_x, train_y, test_x, test_y, 2, Path("sklearn.datasets"), identity)
