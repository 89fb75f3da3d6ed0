"""Tensors and evaluation shared by the clients (local validation) and the server (central test set)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from fedproof.model import ExtractorHead

#: Fashion-MNIST pixel mean and standard deviation (on [0, 1]), used to standardise inputs.
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(n, 28, 28)`` images and int labels to standardised ``(n, 1, 28, 28)`` float32 + int64."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    x = x.sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


#: Features of recently seen image sets: a client's train and validation split, the server's test set. A process
#: (a Ray actor of the simulation, a device's warm ClientApp) serves several rounds, and with a fixed extractor
#: every round would otherwise recompute the same features (scattering: ~1.6 s per 1,000 images on one core).
_FEATURES: OrderedDict[tuple[str, bytes], torch.Tensor] = OrderedDict()
FEATURE_CACHE_ENTRIES = 24
CHUNK = 64  # images per extractor call: larger chunks are slower (memory traffic of the 64 second-order paths)


@torch.no_grad()
def features(model: ExtractorHead, images: np.ndarray) -> torch.Tensor:
    """The head's inputs for uint8 ``images``: ``model.extractor`` of the standardised images, computed once per
    image set (cached by content) when the extractor does anything."""
    x, _ = to_tensors(images, np.zeros(len(images), np.int64))
    if isinstance(model.extractor, nn.Identity):
        return x
    digest = hashlib.sha256(images.tobytes() + repr(images.shape).encode()).digest()
    key = (repr(model.extractor), digest)
    if key not in _FEATURES:
        model.extractor.eval()
        _FEATURES[key] = torch.cat([model.extractor(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)]) \
            if len(x) else x.new_zeros((0,))
        while len(_FEATURES) > FEATURE_CACHE_ENTRIES:
            _FEATURES.popitem(last=False)
    _FEATURES.move_to_end(key)
    return _FEATURES[key]


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
