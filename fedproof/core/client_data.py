"""One client's data, split into train and validation: its partition of the task's records (a simulation, or a
device of the demo that holds a copy of the set), or its own records (a device started with ``--data PATH``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedproof.core.config import RunConfig
from fedproof.core.task import task_dataset
from fedproof.base.errors import ConfigError
from fedproof.core.partition import PartitionSpec, partition_indices, train_val_split


@dataclass(frozen=True)
class ClientData:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    num_classes: int
    dataset: str = ""
    """The identity of the dataset these records come from (``fedproof.core.data.Dataset.identity``)."""


def load_client_data(config: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """The data of simulated client ``partition_id`` of ``num_partitions`` under ``config``'s scheme."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    dataset = task_dataset(config.task, config.data_dir)
    spec = PartitionSpec(
        scheme=config.partition,
        num_partitions=num_partitions,
        seed=config.seed,
        alpha=config.alpha,
        classes_per_partition=config.classes_per_client,
    )
    indices = partition_indices(dataset.train_y, spec)[partition_id]
    train, val = train_val_split(indices, config.val_fraction, seed=config.seed + partition_id)
    return ClientData(
        train_x=dataset.train_x[train],
        train_y=dataset.train_y[train],
        val_x=dataset.train_x[val],
        val_y=dataset.train_y[val],
        num_classes=dataset.num_classes,
        dataset=dataset.identity,
    )


def own_client_data(config: RunConfig, records: tuple[np.ndarray, np.ndarray], num_classes: int, identity: str
                    ) -> ClientData:
    """A device's own records, split into train and validation by the run's ``val-fraction`` (seeded by the run)."""
    x, y = records
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(f"this device's labels lie outside 0..{num_classes - 1}, the task's classes")
    order = np.random.default_rng(config.seed).permutation(len(y))
    cut = int(round(len(y) * config.val_fraction))
    val, train = order[:cut], order[cut:]
    return ClientData(x[train], y[train], x[val], y[val], num_classes, identity)
