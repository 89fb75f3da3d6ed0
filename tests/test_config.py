from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedproof.core.config import RunConfig, pyproject_overrides, resolve
from fedproof.base.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_config_equals_defaults() -> None:
    """`flwr run .` and `fedproof simulate` must start from the same settings."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == RunConfig().to_mapping()


def test_mapping_round_trip() -> None:
    config = RunConfig(clients=3, alpha=0.1, data_dir="/x")
    assert RunConfig.from_mapping(config.to_mapping()) == config


def test_unknown_key_and_wrong_type_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        RunConfig.from_mapping({"num-rounds": 3})
    with pytest.raises(ConfigError, match="must be int"):
        RunConfig.from_mapping({"rounds": "3"})
    assert RunConfig.from_mapping({"lr": 1}).lr == 1.0  # TOML ints are fine where floats are expected


@pytest.mark.parametrize(
    "change",
    [{"clients": 0}, {"fraction_train": 0.0}, {"partition": "random"}, {"alpha": -1.0}, {"lr": float("nan")},
     {"val_fraction": 1.0}, {"run_id": "../x"}],
)
def test_invalid_values_are_refused(change: dict) -> None:
    with pytest.raises(ConfigError):
        dataclasses.replace(RunConfig(), **change)


def test_resolution_order(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "fedproof"\n[tool.flwr.app.config]\nrounds = 7\nclients = 4\n'
    )
    config = resolve({"clients": 2, "alpha": None}, app_dir=tmp_path)
    assert (config.clients, config.rounds, config.alpha) == (2, 7, RunConfig().alpha)


def test_other_projects_pyproject_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n[tool.flwr.app.config]\nfoo = 1\n')
    assert pyproject_overrides(tmp_path) == {}
    assert resolve({}, app_dir=tmp_path) == RunConfig()



def test_dash_c_settings_parse_as_toml_values_typed_by_the_setting() -> None:
    from fedproof.core.config import parse_overrides

    parsed = parse_overrides(["grad-sample-mode=functorch", "run-id=2026", "dp=false", "lr=0.1", "delta=1e-5",
                              'data-dir="/a b"', "seed=7", "target-epsilon=3"])
    assert parsed == {"grad-sample-mode": "functorch", "run-id": "2026", "dp": False, "lr": 0.1, "delta": 1e-5,
                      "data-dir": "/a b", "seed": 7, "target-epsilon": 3}
    assert RunConfig.from_mapping(parsed).grad_sample_mode == "functorch"
    for bad in ["dp=maybe", "rounds=three", "no-such-key=1", "rounds"]:
        with pytest.raises(ConfigError):
            parse_overrides([bad])


def test_resolution_order_with_dash_c(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "fedproof"\n[tool.flwr.app.config]\nrounds = 7\n')
    config = resolve({"clients": 2}, app_dir=tmp_path, settings={"rounds": 3, "clients": 5, "lr": 0.5})
    assert (config.clients, config.rounds, config.lr) == (2, 3, 0.5)  # option > -c > pyproject


def test_the_default_learning_rate_follows_dp() -> None:
    """Clipped DP-SGD steps take lr 4; unclipped SGD at that rate diverges, so without DP the default is 0.05."""
    assert RunConfig().learning_rate() == 4.0
    assert RunConfig(dp=False).learning_rate() == 0.05
    assert RunConfig(dp=False, lr=0.3).learning_rate() == RunConfig(lr=0.3).learning_rate() == 0.3
    with pytest.raises(ConfigError, match="lr must be"):
        RunConfig(lr=-1.0)


def test_batch_epochs_and_lr_default_to_what_fits_the_mode() -> None:
    """Without DP the defaults are unclipped SGD's (DP's made `simulate --no-dp` reach 80% instead of 90%)."""
    from fedproof.core.config import RunConfig

    plain, private = RunConfig(dp=False), RunConfig(dp=True)
    assert (plain.training_batch(), plain.training_epochs(), plain.learning_rate()) == (64, 3, 0.05)
    assert (private.training_batch(), private.training_epochs(), private.learning_rate()) == (512, 1, 4.0)
    chosen = RunConfig(dp=False, batch_size=128, local_epochs=1, lr=0.1)
    assert (chosen.training_batch(), chosen.training_epochs(), chosen.learning_rate()) == (128, 1, 0.1)
