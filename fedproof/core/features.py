"""A model's head inputs for raw records (computed once per record set), and evaluation: shared by the clients
(training, local validation) and the server (central test set)."""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedproof.base.files import write_atomically
from fedproof.core.model import ExtractorHead, StandardizedImages

def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's uint8 ``(n, 28, 28)`` images and int labels to standardised ``(n, 1, 28, 28)`` float32 +
    int64 (what :class:`fedproof.core.model.StandardizedImages` computes)."""
    return StandardizedImages()(torch.from_numpy(np.require(images, requirements=["C", "W"]))), torch.from_numpy(
        labels.astype(np.int64))


#: Features of recently seen image sets: a client's train and validation split, the server's test set. A process
#: (a Ray actor of the simulation, a device's warm ClientApp) serves several rounds, and with a fixed extractor
#: every round would otherwise recompute the same features (scattering: ~1.6 s per 1,000 images on one core).
_FEATURES: OrderedDict[bytes, torch.Tensor] = OrderedDict()
FEATURE_CACHE_ENTRIES = 24
#: The disk cache's size cap: the oldest files go first.
DISK_CACHE_BYTES = 3 * 2**30
CHUNK = 64  # images per extractor call: larger chunks are slower (memory traffic of the 64 second-order paths)


def feature_cache_dir() -> Path:
    """Where features are kept between processes and runs: ``$FEDPROOF_CACHE_DIR``, else ~/.cache/fedproof/features.
    Every process of a simulation (and every run after the first) reads a client's features from here instead of
    computing them again; they are a fixed function of the client's own images and never leave the machine."""
    configured = os.environ.get("FEDPROOF_CACHE_DIR")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "fedproof"
    return base.expanduser() / "features"


@torch.no_grad()
def features(model: ExtractorHead, images: np.ndarray) -> torch.Tensor:
    """The head's inputs for raw records: ``model.extractor`` of what ``model.prepare`` makes of them, computed once
    per record set (kept by content, in memory and on disk) when the extractor does anything."""
    if isinstance(model.extractor, nn.Identity):
        return _prepared(model, images)
    key = hashlib.sha256(repr(model.prepare).encode() + repr(model.extractor).encode() + repr(images.shape).encode()
                         + images.dtype.str.encode() + images.tobytes()).digest()
    if key not in _FEATURES:  # standardise only when the features must be computed
        cached = _from_disk(key, len(images))
        _FEATURES[key] = cached if cached is not None else _compute(model, images, key)
        while len(_FEATURES) > FEATURE_CACHE_ENTRIES:
            _FEATURES.popitem(last=False)
    _FEATURES.move_to_end(key)
    return _FEATURES[key]


def _prepared(model: ExtractorHead, records: np.ndarray) -> torch.Tensor:
    return model.prepare(torch.from_numpy(np.require(records, requirements=["C", "W"])))


def _compute(model: ExtractorHead, images: np.ndarray, key: bytes) -> torch.Tensor:
    x = _prepared(model, images)
    extractor = model.extractor.eval()
    out = torch.cat([extractor(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)])
    try:
        directory = feature_cache_dir()
        buffer = io.BytesIO()
        np.save(buffer, out.numpy(), allow_pickle=False)
        write_atomically(directory / f"{key.hex()}.npy", buffer.getvalue())  # a concurrent reader sees all or nothing
        _trim(directory)
    except OSError:  # a read-only or full disk only costs the recomputation next time
        pass
    return out


def _from_disk(key: bytes, n: int) -> torch.Tensor | None:
    path = feature_cache_dir() / f"{key.hex()}.npy"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.float32 or array.ndim < 2 or len(array) != n or not np.isfinite(array).all():
        return None
    os.utime(path)
    return torch.from_numpy(array)


def _trim(directory: Path) -> None:
    files = sorted(directory.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in files:
        total += path.stat().st_size
        if total > DISK_CACHE_BYTES:
            path.unlink(missing_ok=True)


@torch.no_grad()
def evaluate(model: ExtractorHead, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024
             ) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on the given data (0, 0 when it is empty)."""
    if len(labels) == 0:
        return 0.0, 0.0
    model.eval()
    inputs, y = features(model, images), torch.from_numpy(labels.astype(np.int64))
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = model.head(inputs[start : start + batch_size])
        yb = y[start : start + batch_size]
        total_loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
    return total_loss / len(labels), correct / len(labels)
