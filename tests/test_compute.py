"""Training on a GPU where there is one: the device setting's resolution, and simulation's GPU share per client."""

from __future__ import annotations

import pytest
import torch

from fedproof.base.errors import ConfigError
from fedproof.core.compute import select_device
from fedproof.core.config import RunConfig
from fedproof.launch.simulation import backend_config


def yes() -> bool:
    return True


def no() -> bool:
    return False


@pytest.mark.parametrize("setting, available, count, expected", [
    ("auto", no, 0, "cpu"), ("auto", yes, 1, "cuda:0"), ("cpu", yes, 2, "cpu"), ("cuda", yes, 1, "cuda:0"),
    ("cuda:1", yes, 2, "cuda:1"),
])
def test_the_device_setting_picks_what_the_machine_has(setting, available, count, expected) -> None:
    assert select_device(setting, available, lambda: count) == torch.device(expected)


@pytest.mark.parametrize("setting, available, count, words", [
    ("cuda", no, 0, "no CUDA GPU"), ("cuda:2", yes, 2, "has 2 CUDA GPU"),
])
def test_asking_for_a_gpu_the_machine_lacks_is_a_clear_error_not_a_silent_cpu_run(setting, available, count,
                                                                                  words) -> None:
    with pytest.raises(ConfigError, match=words):
        select_device(setting, available, lambda: count)


def test_settings_are_checked_and_simulation_gives_each_client_its_gpu_share() -> None:
    with pytest.raises(ConfigError, match="device must be"):
        RunConfig(device="gpu")
    with pytest.raises(ConfigError, match="gpus-per-client"):
        RunConfig(gpus_per_client=2.0)
    assert backend_config(2, gpus_per_client=0.25)["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert backend_config(2)["client_resources"]["num_gpus"] == 0.0


def test_training_on_the_selected_device_leaves_the_update_on_the_cpu() -> None:
    import numpy as np

    from fedproof.core.task import load_task
    from fl_client.state import ClientState
    from fl_client.training import train_round

    task = load_task("breast-cancer")
    data = task.dataset(None)
    model = task.model(seed=0)
    config = RunConfig(task="breast-cancer", device="auto", dp=True, batch_size=32, local_epochs=1, delta=1e-3,
                       max_grad_norm=1.0, lr=0.5, noise_multiplier=1.0, target_epsilon=0.0)
    outcome = train_round(model, data.train_x, data.train_y, config, ClientState(), 1, seed=0)
    assert outcome.epsilon is not None and all(p.device.type == "cpu" for p in model.parameters())
    assert np.isfinite(outcome.loss)
