"""The task: what a user brings to a federation (the model and the data), and everything fedproof adds works on.

A task is a small class a user writes in their own package, as Flower's ``flwr new`` puts the model and the
loaders in an app's ``task.py``. fedproof brings the rest: DP-SGD under each device's policy, threshold HE,
signed and co-signed lineage, audit, deployment and drift monitoring. A run names its task in its settings
(``task = "fashion-mnist"``, or ``"my_package.task:HospitalRecords"``); a device trains only the task its own node
config names, whatever a server asks (:func:`fl_client.device.Device`).

What a task declares:

- ``record``: what one raw record is (:class:`~fedproof.core.loaders.RecordSpec`): an image's size, a table's
  feature columns and label column. Devices send raw records to the exported graph, and load their own data in
  those terms (:func:`~fedproof.core.loaders.load_records`: CSV, Parquet, ``.npz``, image folders).
- ``models`` and :meth:`Task.build`: any ``torch.nn.Module`` head that Opacus accepts, behind an optional fixed
  feature extractor (no parameters: computed once per dataset) and a fixed ``prepare`` from raw records (both in
  :class:`~fedproof.core.model.ExtractorHead`; ``prepare`` goes into the exported ONNX graph).
- :meth:`Task.dataset`: the records a simulation splits among its clients (flwr-datasets' partitioners) and an
  optional central test set for the server.

Classification with cross-entropy and accuracy is what every task trains and reports today.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from fedproof.base.errors import ConfigError
from fedproof.core.data import Dataset
from fedproof.core.loaders import RecordSpec, load_records
from fedproof.core.model import ExtractorHead

BUILT_IN = {
    "fashion-mnist": "fedproof.core.tasks.fashion_mnist:FashionMNIST",
    "breast-cancer": "fedproof.core.tasks.breast_cancer:BreastCancer",
}
"""Tasks that ship with fedproof, by name; any other is ``module:Class`` of an installed package."""


class Task(ABC):
    """One federated learning task. Subclass it, set the class attributes, and implement :meth:`build` and
    :meth:`dataset`; :meth:`device_records` reads a device's own data in the formats people have."""

    name: ClassVar[str]
    record: ClassVar[RecordSpec]
    models: ClassVar[tuple[str, ...]]
    """The model names :meth:`build` takes; the first is the default (a run's ``model = ""``)."""
    num_classes: ClassVar[int]

    @abstractmethod
    def build(self, model: str, num_classes: int) -> ExtractorHead:
        """A fresh model ``model`` (one of :attr:`models`) with ``num_classes`` outputs."""

    @abstractmethod
    def dataset(self, data_dir: str | None) -> Dataset:
        """The records of a simulation (split among its clients) and the server's central test set (may be
        empty); ``data_dir`` is the run's ``data-dir`` setting ('' or None: the task's own default place)."""

    def device_records(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """A device's own records and labels, from the path its owner gave (``fedproof client --data PATH``)."""
        return load_records(path, self.record)

    def model_name(self, model: str = "") -> str:
        name = model or self.models[0]
        if name not in self.models:
            raise ConfigError(f"model {name!r} is not one of task {self.name}'s: {', '.join(self.models)}")
        return name

    def model(self, model: str = "", num_classes: int | None = None, seed: int | None = None) -> ExtractorHead:
        """A fresh model (the task's default for ``model=""``); with ``seed`` its initial weights are reproducible."""
        name = self.model_name(model)
        classes = num_classes if num_classes is not None else self.num_classes
        if seed is None:
            return self.build(name, classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.build(name, classes)


@functools.lru_cache(maxsize=8)
def load_task(reference: str) -> Task:
    """The task a run names: a built-in one (:data:`BUILT_IN`) or ``module:Class`` of an installed package."""
    target = BUILT_IN.get(reference, reference)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"task {reference!r} is neither a built-in task ({', '.join(BUILT_IN)}) nor 'module:Class' "
                          "of an installed package")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task {reference!r} cannot be loaded ({exc}); is its package installed here?") from exc
    task = found() if isinstance(found, type) else found
    if not isinstance(task, Task):
        raise ConfigError(f"task {reference!r} is a {type(task).__name__}, not a fedproof.core.task.Task")
    return task


@functools.lru_cache(maxsize=2)
def task_dataset(reference: str, data_dir: str = "") -> Dataset:
    """The records of task ``reference`` for a simulation, read once per process (each simulated client asks for its
    partition every round; an image folder or a CSV is not re-read each time)."""
    return load_task(reference).dataset(data_dir or None)


__all__ = ["BUILT_IN", "RecordSpec", "Task", "load_task", "task_dataset"]
