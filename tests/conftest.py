"""Shared fixtures: small generated IDX datasets (the real Fashion-MNIST is used by the demo and benchmarks)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedproof.core.data import write_manifest

# features computed by tests (and the processes they start) go to a cache of this session's own, not the user's
os.environ["FEDPROOF_CACHE_DIR"] = tempfile.mkdtemp(prefix="fedproof-test-cache-")


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images in which class c is a bright 6x6 square at a class-specific place, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        row, col = 2 + 8 * (int(c) // 3), 2 + 8 * (int(c) % 3)
        images[i, row : row + 6, col : col + 6] = 200 + rng.integers(0, 55)
    return images


def write_synthetic(directory: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    train_y = rng.integers(0, 10, size=n_train).astype(np.uint8)
    test_y = rng.integers(0, 10, size=n_test).astype(np.uint8)
    write_manifest(
        directory,
        name="synthetic",
        num_classes=10,
        arrays={
            "train_images": make_images(train_y, rng),
            "train_labels": train_y,
            "test_images": make_images(test_y, rng),
            "test_labels": test_y,
        },
    )
    return directory


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory):
    """A real anvil devnet on a free loopback port, for the whole session; stopped at the end."""
    import socket

    from ledger.devnet import Devnet

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chain = Devnet(tmp_path_factory.mktemp("devnet"), port=port)
    chain.start()
    yield chain
    chain.stop()



@pytest.fixture()
def virtual_exchange_clock():
    """Waiting out a silent node's timeout in ``fl_server.exchange`` takes no real time (FakeGrid tests only: a real
    Grid needs real waits)."""
    from fakegrid import virtual_time

    with virtual_time():
        yield
