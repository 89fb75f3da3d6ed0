"""What both HE schemes share around SEAL: its objects as bytes (its Python bindings save and load through file
paths only, so through a private temporary file, in /dev/shm where there is one), and the check of what may be
encrypted at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from privacy.errors import PlaintextRangeError


def encryptable(values, capacity: float) -> np.ndarray:
    """``values`` as a float64 vector, refused unless 1-D, non-empty, finite and within +-``capacity``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise PlaintextRangeError(f"expected a non-empty 1-D vector, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise PlaintextRangeError("refusing to encrypt NaN or infinite values")
    peak = float(np.abs(values).max())
    if peak > capacity:
        raise PlaintextRangeError(f"|value| {peak:.4g} exceeds the capacity {capacity:.4g} of the HE scheme")
    return values


def save(obj) -> bytes:
    """A SEAL object's serialization (SEAL's own format, compressed as SEAL chooses)."""
    with _scratch() as path:
        obj.save(path)
        return Path(path).read_bytes()


def load(context, obj, data: bytes):
    """``obj`` loaded from ``data`` under ``context`` (SEAL validates it against the parameters)."""
    with _scratch() as path:
        Path(path).write_bytes(data)
        obj.load(context, path)
    return obj


class _scratch:
    """A private temporary file path, removed on exit."""

    _dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

    def __enter__(self) -> str:
        fd, self.path = tempfile.mkstemp(prefix="fedproof-seal-", dir=self._dir)
        os.close(fd)
        return self.path

    def __exit__(self, *exc) -> None:
        os.unlink(self.path)
