"""Where training runs: the run's ``device`` setting resolved against what this machine has."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedproof.base.errors import ConfigError


def select_device(setting: str, cuda_available: Callable[[], bool] = torch.cuda.is_available,
                  cuda_count: Callable[[], int] = torch.cuda.device_count) -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``, which must
    exist here (a clear error rather than a silent fall-back to the CPU the user did not ask for)."""
    if setting == "cpu" or (setting == "auto" and not cuda_available()):
        return torch.device("cpu")
    if setting == "auto":
        return torch.device("cuda:0")
    if not cuda_available():
        raise ConfigError(f"device {setting!r}: this machine has no CUDA GPU that torch can use (device=auto or cpu "
                          "trains on the CPU)")
    index = int(setting[5:]) if setting.startswith("cuda:") else 0
    if index >= cuda_count():
        raise ConfigError(f"device {setting!r}: this machine has {cuda_count()} CUDA GPU(s)")
    return torch.device("cuda", index)
