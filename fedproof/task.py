"""Tensors and evaluation shared by the clients (local validation) and the server (central test set)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Fashion-MNIST pixel mean and standard deviation (on [0, 1]), used to standardise inputs.
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(n, 28, 28)`` images and int labels to standardised ``(n, 1, 28, 28)`` float32 + int64."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    x = x.sub_(PIXEL_MEAN).div_(PIXEL_STD).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on the given data (0, 0 when it is empty)."""
    if len(labels) == 0:
        return 0.0, 0.0
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x, y = to_tensors(images[start : start + batch_size], labels[start : start + batch_size])
        logits = model(x)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(labels), correct / len(labels)
