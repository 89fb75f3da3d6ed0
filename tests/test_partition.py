from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedproof.base.errors import PartitionError
from fedproof.core.partition import PartitionSpec, partition_indices, train_val_split


def labels(n: int = 2000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(np.int64)


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n, "some sample is missing or repeated"
    assert np.array_equal(np.sort(joined), np.arange(n))


def label_skew(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    glob = np.bincount(y, minlength=10) / len(y)
    return float(np.mean([0.5 * np.abs(np.bincount(y[p], minlength=10) / len(p) - glob).sum() for p in parts]))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_deterministic_disjoint_complete(scheme: str) -> None:
    y = labels()
    spec = PartitionSpec(scheme, num_partitions=10, seed=7, alpha=0.5, classes_per_partition=2)
    a = partition_indices(y, spec)
    b = partition_indices(y.copy(), spec)
    assert len(a) == 10
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert_exact_cover(a, len(y))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_seed_changes_the_split(scheme: str) -> None:
    y = labels()
    a = partition_indices(y, PartitionSpec(scheme, 10, seed=1))
    b = partition_indices(y, PartitionSpec(scheme, 10, seed=2))
    assert any(not np.array_equal(np.sort(x), np.sort(z)) for x, z in zip(a, b, strict=True))


def test_non_iid_skew_is_present() -> None:
    y = labels(6000)
    iid = label_skew(y, partition_indices(y, PartitionSpec("iid", 10, seed=0)))
    dirichlet = label_skew(y, partition_indices(y, PartitionSpec("dirichlet", 10, seed=0, alpha=0.5)))
    pathological = label_skew(y, partition_indices(y, PartitionSpec("pathological", 10, seed=0)))
    assert iid < 0.1
    assert dirichlet > 3 * iid and dirichlet > 0.25
    assert pathological > 0.7  # two classes of ten: ~0.8 away from uniform


def test_pathological_classes_per_client() -> None:
    y = labels()
    for k in (1, 2, 3):
        parts = partition_indices(y, PartitionSpec("pathological", 10, seed=0, classes_per_partition=k))
        assert all(len(np.unique(y[p])) == k for p in parts)


def test_pathological_that_would_drop_classes_is_refused() -> None:
    with pytest.raises(PartitionError, match="unassigned"):
        partition_indices(labels(), PartitionSpec("pathological", 3, seed=0, classes_per_partition=2))


def test_more_clients_than_samples_is_refused() -> None:
    with pytest.raises(PartitionError, match="fewer samples than clients"):
        partition_indices(labels(5), PartitionSpec("iid", 10, seed=0))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(50, 400),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    alpha=st.floats(0.1, 10.0),
    scheme=st.sampled_from(["iid", "dirichlet"]),
)
def test_every_sample_assigned_exactly_once(n: int, k: int, seed: int, alpha: float, scheme: str) -> None:
    y = labels(n, seed=seed)
    assert_exact_cover(partition_indices(y, PartitionSpec(scheme, k, seed=seed, alpha=alpha)), n)


def test_train_val_split() -> None:
    idx = np.arange(100, 200)
    train, val = train_val_split(idx, 0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert np.array_equal(np.sort(np.concatenate([train, val])), idx)
    again = train_val_split(idx, 0.1, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert len(train_val_split(idx[:1], 0.1, seed=0)[1]) == 0  # a single sample stays for training
    assert len(train_val_split(idx, 0.0, seed=0)[1]) == 0


@pytest.mark.slow  # flwr-datasets' ten attempts at 1,000 partitions first: seconds
def test_a_fleet_of_devices_gets_label_skewed_partitions_where_the_class_wise_draw_gives_up() -> None:
    """10,000 devices on 60,000 samples (six each): flwr-datasets' class-wise Dirichlet cannot give every device a
    sample and gives up; each device's class mix is drawn instead. Exact cover, equal sizes, skewed, seeded."""
    import numpy as np

    from fedproof.core.partition import PartitionSpec, dirichlet_per_client, partition_indices

    labels = np.random.default_rng(0).integers(0, 10, 60_000)
    parts = dirichlet_per_client(labels, 10_000, 0.5, seed=42)
    assert {len(p) for p in parts} == {6}
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60_000))
    mixes = [np.bincount(labels[p], minlength=10) for p in parts[:2000]]
    assert np.mean([np.count_nonzero(m) for m in mixes]) < 4  # iid draws of six would hold about five classes
    assert all(np.array_equal(a, b) for a, b in zip(parts, dirichlet_per_client(labels, 10_000, 0.5, seed=42)))
    small = np.random.default_rng(1).integers(0, 10, 3_000)  # 1,000 devices of three: the fallback, end to end
    fleet = partition_indices(small, PartitionSpec("dirichlet", 1_000, 7, 0.5))
    assert np.array_equal(np.sort(np.concatenate(fleet)), np.arange(3_000)) and min(len(p) for p in fleet) == 3
