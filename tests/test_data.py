from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedproof.core import data
from fedproof.core.data import (
    FASHION_MNIST,
    SYSTEM_DATA_DIR,
    encode_idx,
    load_dataset,
    locate,
    parse_idx,
    read_idx,
    search_path,
)
from fedproof.base.errors import DataIntegrityError, DatasetNotFoundError

DTYPES = [np.uint8, np.int8, np.dtype(">i2"), np.dtype(">i4"), np.dtype(">f4"), np.dtype(">f8")]


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=7),
        elements={"allow_nan": False},
    )
)
def test_idx_round_trip(array: np.ndarray) -> None:
    back = parse_idx(encode_idx(array))
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_read_tiny_gz_file_with_checksum(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    raw = encode_idx(labels)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(path, hashlib.sha256(raw).hexdigest()), labels)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x01" + b[1:], "bad magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "unknown IDX element type"),
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:6], "truncated IDX header"),
        (lambda b: b"", "bad magic"),
    ],
)
def test_corrupt_idx_is_refused(mutate, message: str) -> None:
    raw = encode_idx(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataIntegrityError, match=message):
        parse_idx(mutate(raw))


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    raw = encode_idx(np.arange(5, dtype=np.uint8))
    path = tmp_path / "x-idx"
    path.write_bytes(raw)
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        read_idx(path, "0" * 64)


def test_damaged_gzip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-idx.gz"
    path.write_bytes(gzip.compress(encode_idx(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(DataIntegrityError, match="cannot read"):
        read_idx(path)


def test_oversized_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-idx.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(10_000, dtype=np.uint8))))
    with pytest.raises(DataIntegrityError, match="limit"):
        read_idx(path, max_bytes=1_000)


def test_search_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDPROOF_DATA_DIR", str(tmp_path))
    dirs = search_path()
    assert dirs[0] == tmp_path and dirs[1] == SYSTEM_DATA_DIR and dirs[2].name == "fashion-mnist"
    assert search_path(tmp_path / "explicit") == [tmp_path / "explicit"]


def test_missing_dataset_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        locate(tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "zalandoresearch/fashion-mnist" in str(info.value)


def test_fashion_mnist_files_are_checked_against_known_hashes(tmp_path: Path) -> None:
    """A directory with files of the right names but the wrong bytes is refused."""
    for f in FASHION_MNIST.files:
        (tmp_path / f"{f.name}.gz").write_bytes(gzip.compress(encode_idx(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        load_dataset(tmp_path)


def test_manifest_dataset_loads_and_is_verified(synthetic_dir: Path, tmp_path: Path) -> None:
    ds = load_dataset(synthetic_dir)
    assert ds.name == "synthetic" and ds.train_x.shape == (600, 28, 28) and ds.test_y.shape == (200,)
    assert ds.train_y.dtype == np.int64
    # Same manifest, one file's bytes changed: refused.
    for p in synthetic_dir.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    victim = tmp_path / "test-labels-idx.gz"
    labels = parse_idx(gzip.decompress(victim.read_bytes())).copy()
    labels[0] = (labels[0] + 1) % 10
    victim.write_bytes(gzip.compress(encode_idx(labels)))
    data._load.cache_clear()
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        load_dataset(tmp_path)


@pytest.mark.skipif(not SYSTEM_DATA_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    ds = load_dataset(SYSTEM_DATA_DIR)
    assert ds.train_x.shape == (60_000, 28, 28) and ds.test_x.shape == (10_000, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
