from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedproof.config import RunConfig, pyproject_overrides, resolve
from fedproof.errors import ConfigError

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

