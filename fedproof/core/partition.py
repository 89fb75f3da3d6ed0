"""Split training data among clients with flwr-datasets' partitioners, offline, on our local arrays.

flwr-datasets only needs the label column, so it gets a tiny labels-only ``datasets.Dataset`` with an
``idx`` column; what comes back are index arrays into our numpy data. Every scheme is deterministic by
seed, and the result is checked to assign every training sample to exactly one client.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

from fedproof.base.errors import PartitionError

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: scheme, number of partitions, seed, and the scheme's parameter."""

    scheme: str
    num_partitions: int
    seed: int
    alpha: float = 0.5
    classes_per_partition: int = 2


def partition_indices(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Index arrays, one per partition, that together hold every index of ``labels`` exactly once."""
    return list(_partition_cached(labels.tobytes(), labels.dtype.str, spec))


@functools.lru_cache(maxsize=4)
def _partition_cached(label_bytes: bytes, dtype: str, spec: PartitionSpec) -> tuple[np.ndarray, ...]:
    import datasets  # heavy import, paid only when partitioning
    from flwr_datasets import partitioner as fp

    datasets.disable_progress_bars()
    labels = np.frombuffer(label_bytes, dtype=np.dtype(dtype))
    n, k = len(labels), spec.num_partitions
    if k > n:
        raise PartitionError(f"cannot split {n} samples among {k} clients: fewer samples than clients")
    table = datasets.Dataset.from_dict({"label": labels.astype(np.int64), "idx": np.arange(n, dtype=np.int64)})
    if spec.scheme == "iid":
        # IidPartitioner shards contiguously; shuffling first by seed makes the shards iid and seeded.
        table = table.shuffle(seed=spec.seed).flatten_indices()
        part: fp.Partitioner = fp.IidPartitioner(num_partitions=k)
    elif spec.scheme == "dirichlet":
        part = fp.DirichletPartitioner(
            num_partitions=k,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=max(1, min(10, n // (4 * k))),
            self_balancing=False,
            shuffle=True,
            seed=spec.seed,
        )
    elif spec.scheme == "pathological":
        part = fp.PathologicalPartitioner(
            num_partitions=k,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_partition,
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=spec.seed,
        )
    else:
        raise PartitionError(f"unknown partition scheme {spec.scheme!r}; use iid, dirichlet or pathological")
    part.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = tuple(
                np.asarray(part.load_partition(i).with_format("numpy")[:]["idx"], dtype=np.int64) for i in range(k)
            )
    except ValueError as exc:
        if spec.scheme != "dirichlet":
            raise PartitionError(f"{spec.scheme} partitioning of {n} samples into {k} failed: {exc}") from exc
        # a fleet (thousands of devices, a few samples each): flwr-datasets' class-wise draw cannot give every
        # device a sample; draw each device's class mix instead (its size fixed), which always succeeds
        result = dirichlet_per_client(labels, k, spec.alpha, spec.seed)
    _check_exact_cover(result, n, spec)
    return result


def dirichlet_per_client(labels: np.ndarray, k: int, alpha: float, seed: int) -> tuple[np.ndarray, ...]:
    """Label-skewed partitions of equal size (n // k or one more): each client's class mix is drawn from
    Dirichlet(alpha) over the classes (Hsu, Qi and Brown, 2019), and its samples are taken from what is left of each
    class, the shortfall of an exhausted class moved to the classes that still have samples. Deterministic by seed."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    stock = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    sizes = np.full(k, len(labels) // k)
    sizes[: len(labels) % k] += 1
    parts = []
    for size in sizes:
        left = np.array([len(s) for s in stock], dtype=float)
        mix = rng.dirichlet(np.full(len(classes), alpha)) * (left > 0)
        mix = mix / mix.sum() if mix.sum() > 0 else left / left.sum()
        counts = np.minimum(rng.multinomial(size, mix), left.astype(int))
        while counts.sum() < size:  # an exhausted class's share goes to the classes still in stock
            spare = left - counts
            counts[int(np.argmax(spare * (mix + 1e-9)))] += 1
        taken = [stock[c][len(stock[c]) - int(m):] for c, m in enumerate(counts) if m]
        for c, m in enumerate(counts):
            if m:
                del stock[c][len(stock[c]) - int(m):]
        parts.append(np.sort(np.concatenate(taken).astype(np.int64)))
    return tuple(parts)


def _check_exact_cover(parts: tuple[np.ndarray, ...], n: int, spec: PartitionSpec) -> None:
    counts = np.bincount(np.concatenate(parts), minlength=n) if parts else np.zeros(n, dtype=np.int64)
    missing, repeated = int((counts == 0).sum()), int((counts > 1).sum())
    if missing or repeated:
        hint = (
            " (pathological partitioning leaves classes unassigned when clients x classes-per-client "
            "is below the number of classes)"
            if spec.scheme == "pathological"
            else ""
        )
        raise PartitionError(
            f"{spec.scheme} partitioning into {spec.num_partitions} clients leaves {missing} samples "
            f"unassigned and {repeated} assigned twice{hint}"
        )


def train_val_split(indices: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into train and local validation, deterministically by seed."""
    shuffled = np.random.default_rng(seed).permutation(indices)
    n_val = int(round(len(shuffled) * val_fraction))
    if val_fraction > 0 and len(shuffled) >= 2:
        n_val = min(max(n_val, 1), len(shuffled) - 1)
    else:
        n_val = 0
    return shuffled[n_val:], shuffled[:n_val]
