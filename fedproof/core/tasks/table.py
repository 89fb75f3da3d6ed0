"""A classification task on table rows, to subclass: name the columns, the label and its classes, and give the
features' reference statistics.

The statistics standardise each feature inside the model (``prepare``), so they travel in the exported graph and a
device sends raw rows. They are constants of the task's code, the same on every party: the server, each device and
an auditor build the same model from them. ``fedproof new NAME --template tabular --csv SAMPLE`` writes them from a
sample the task's author may share (or from public reference values); never from one device's private rows.

A simulation reads ``simulation_csv`` (relative to the task's own module, or the run's ``data-dir``), splits it once
(seeded, stratified) into the clients' records and a central test set.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fedproof.base.errors import ConfigError
from fedproof.core.data import Dataset
from fedproof.core.loaders import load_records
from fedproof.core.model import ExtractorHead
from fedproof.core.task import Task


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with fixed statistics (plain attributes: not learned, not exchanged)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.mean = torch.tensor(np.asarray(mean, np.float32))
        self.std = torch.tensor(np.maximum(np.asarray(std, np.float32), 1e-6))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows.to(torch.float32) - self.mean.to(rows.device)) / self.std.to(rows.device)

    def extra_repr(self) -> str:
        digest = hashlib.sha256(self.mean.numpy().tobytes() + self.std.numpy().tobytes()).hexdigest()[:12]
        return f"features={len(self.mean)}, statistics_sha256={digest}"


class TableTask(Task):
    """Rows of ``record.columns`` with a ``record.label`` among ``record.classes``; an MLP (tanh) or a logistic
    regression on the standardised features."""

    models = ("mlp", "logistic")
    hidden: ClassVar[int] = 16
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    """Each feature's reference mean and standard deviation ('': none, 0 and 1)."""
    simulation_csv: ClassVar[str] = ""
    """The rows a simulation splits among its clients (a path relative to the task's module)."""
    test_fraction: ClassVar[float] = 0.2

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.record.classes)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        width = len(self.record.columns)
        mean = np.asarray(self.mean or [0.0] * width, np.float32)
        std = np.asarray(self.std or [1.0] * width, np.float32)
        if mean.shape != (width,) or std.shape != (width,):
            raise ConfigError(f"task {self.name}: mean and std must give one value per column ({width})")
        return mean, std

    def build(self, model: str, num_classes: int) -> ExtractorHead:
        width = len(self.record.columns)
        head: nn.Module = (nn.Sequential(nn.Linear(width, self.hidden), nn.Tanh(), nn.Linear(self.hidden, num_classes))
                           if model == "mlp" else nn.Linear(width, num_classes))
        return ExtractorHead(nn.Identity(), head, Standardize(*self.statistics()))

    def dataset(self, data_dir: str | None) -> Dataset:
        return simulation_records(self, data_dir, self.simulation_csv, self.test_fraction,
                                  "set its simulation_csv, or the run's data-dir to a CSV of its rows")


def simulation_records(task: Task, data_dir: str | None, own: str, test_fraction: float, hint: str) -> Dataset:
    """A simulation's records of ``task``: the run's ``data-dir`` if it names one, else ``own`` (a path relative to
    the task's module), split once into the clients' records and a central test set."""
    if data_dir:
        path = Path(data_dir).expanduser()
    elif own:
        path = Path(inspect.getfile(type(task))).resolve().parent / own
    else:
        raise ConfigError(f"task {task.name} has no records to simulate with: {hint}")
    return split_rows(task.name, *load_records(path, task.record), task.num_classes, test_fraction, path)


@functools.lru_cache(maxsize=4)
def _order(labels: bytes, n: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.frombuffer(labels, np.int64)
    rng = np.random.default_rng(0)
    test = []
    for label in np.unique(y):  # stratified: each class keeps its share in the test set
        members = np.flatnonzero(y == label)
        test.extend(rng.permutation(members)[: int(round(len(members) * test_fraction))])
    mask = np.zeros(n, bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def split_rows(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, test_fraction: float, source: Path
               ) -> Dataset:
    """Records split once, seeded and stratified, into a simulation's training rows and a central test set."""
    train, test = _order(y.astype(np.int64).tobytes(), len(y), test_fraction)
    identity = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    return Dataset(name, x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64), num_classes, source,
                   identity)
