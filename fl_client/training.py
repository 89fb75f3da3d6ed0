"""Local training of the global model on a client's partition: plain mini-batch SGD with momentum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedproof.task import to_tensors


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    seed: int


@dataclass(frozen=True)
class TrainResult:
    loss: float
    """Mean training loss over the last local epoch."""
    num_examples: int


def train_local(model: nn.Module, images: np.ndarray, labels: np.ndarray, settings: TrainSettings) -> TrainResult:
    """Train ``model`` in place for ``settings.epochs`` passes over the data, shuffled by ``settings.seed``."""
    x, y = to_tensors(images, labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    epoch_loss = 0.0
    for _ in range(settings.epochs):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        epoch_loss = total / max(len(y), 1)
    return TrainResult(loss=epoch_loss, num_examples=len(y))
