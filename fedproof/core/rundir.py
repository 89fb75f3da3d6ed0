"""A run's directory: ``run.json`` (resolved config), ``metrics.jsonl`` (a row per round),
``model.safetensors`` (the final global model) and ``accuracy.png``.

Everything here is plain JSON or safetensors, so a run can be inspected or audited without unpickling.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file

from fedproof.core.config import RunConfig, Scalar
from fedproof.base.errors import ConfigError
from fedproof.base.files import write_atomically

RUN_JSON, METRICS_JSONL, MODEL_FILE, PLOT_FILE = "run.json", "metrics.jsonl", "model.safetensors", "accuracy.png"


@dataclass(frozen=True)
class RoundMetrics:
    """What one round produced, as written to ``metrics.jsonl``."""

    round: int
    accuracy: float
    """Global model's accuracy on the central test set after this round."""
    loss: float
    seconds: float
    """Wall time of the round: training, client evaluation and central evaluation."""
    train_loss: float | None = None
    val_accuracy: float | None = None
    """Example-weighted accuracy on the clients' local validation splits."""
    val_loss: float | None = None
    train_clients: int = 0
    evaluate_clients: int = 0
    epsilon_max: float | None = None
    """Largest privacy spent by a client so far, among this round's replies (None without DP)."""
    epsilon_mean: float | None = None
    budget_exhausted: int = 0
    """Clients that declined this round because their privacy budget is spent."""
    policy_refused: int = 0
    """Clients that declined because the run asked for less privacy than their policy allows."""
    rejected_updates: int = 0
    """Updates refused before aggregation (malformed, corrupt, out of range)."""
    upload_bytes_per_param: float | None = None
    """Mean bytes per model parameter of this round's updates (ciphertexts under HE, float32 otherwise)."""
    client_train_seconds: float | None = None
    """Clients' local training time (example-weighted mean): the part of ``seconds`` that is learning."""
    client_secure_seconds: float | None = None
    """Clients' time to encrypt and sign their update (example-weighted mean)."""
    failed: str = ""
    """Why the round produced no new model (e.g. too few key holders decrypted the sum); empty when it did."""
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    """Train replies set aside, counted by reason code (``fedproof.core.replies.Reason``)."""
    evaluate_rejected: dict[str, int] = field(default_factory=dict)
    """Evaluate replies set aside, counted by reason code."""
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Where ``seconds`` went: ``check-in``, ``train`` (the exchange: sending, clients training, replies back),
    ``reveal``, ``sum``, ``decrypt``, ``co-sign`` (HE's exchanges), ``evaluate`` (the clients' exchange),
    ``central`` (the server's test set)."""
    update_clip: float | None = None
    """User-level DP: the update clip C this round's devices clipped to."""
    unclipped_share: float | None = None
    """User-level DP with adaptive clipping: the noised share of this round's updates that needed no clipping,
    which sets the next round's clip."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class RunDirectory:
    """Reads and writes the files of one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, config: RunConfig) -> tuple[RunDirectory, RunConfig]:
        """Create ``run_dir/run_id`` (choosing a run id if none is set) and write ``run.json``."""
        if not config.run_id:
            config = config.with_overrides(run_id=new_run_id())
        path = Path(config.run_dir).expanduser().resolve() / config.run_id
        config = config.with_overrides(run_dir=str(path.parent))  # absolute: clients may run elsewhere (Ray actors)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        (path / METRICS_JSONL).unlink(missing_ok=True)
        run._write_json(RUN_JSON, {"config": config.to_mapping(), "started": time.time()})
        return run, config

    @classmethod
    def reopen(cls, config: RunConfig) -> tuple[RunDirectory, RunConfig]:
        """An existing run directory, to resume it: its metrics so far are kept."""
        path = Path(config.run_dir).expanduser().resolve() / config.run_id
        if not (path / RUN_JSON).is_file():
            raise ConfigError(f"cannot resume: no run {config.run_id!r} in {path.parent}")
        return cls(path), config.with_overrides(run_dir=str(path.parent))

    def keep_rounds(self, last: int) -> list[RoundMetrics]:
        """Drop metrics rows after round ``last`` (not recorded before a crash); return the rows kept."""
        rows = [r for r in self.metrics() if r.round <= last] if (self.path / METRICS_JSONL).is_file() else []
        self._write_lines(METRICS_JSONL, [json.dumps(asdict(r)) for r in rows])
        return rows

    def _write_lines(self, name: str, lines: list[str]) -> None:
        write_atomically(self.path / name, "".join(line + "\n" for line in lines).encode())

    def read(self) -> dict[str, Any]:
        """``run.json`` as a whole: the one place it is parsed."""
        path = self.path / RUN_JSON
        if not path.is_file():
            raise ConfigError(f"no run in {self.path}: it has no {RUN_JSON}")
        try:
            doc = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise ConfigError(f"{path} holds no run settings")
        return doc

    def write_config(self, config: RunConfig, resolved: Mapping[str, Scalar]) -> None:
        """Save the run's settings with what start-up resolved (the key set's path, the chain, W), so that later
        commands (resume, deploy, audit, ledger flush) find the same keys and chain."""
        self._write_json(RUN_JSON, {**self.read(), "config": {**config.to_mapping(), **resolved}})

    def _write_json(self, name: str, payload: dict[str, Any]) -> None:
        write_atomically(self.path / name, json.dumps(payload, indent=2, sort_keys=True).encode())

    def config(self) -> RunConfig:
        """The run's resolved settings, as saved."""
        return RunConfig.from_mapping(self.read()["config"])

    def append_metrics(self, row: RoundMetrics) -> None:
        with open(self.path / METRICS_JSONL, "a") as fh:
            fh.write(json.dumps(asdict(row)) + "\n")

    def metrics(self) -> list[RoundMetrics]:
        path = self.path / METRICS_JSONL
        if not path.exists():
            return []
        return [RoundMetrics(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    def load_model(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / MODEL_FILE))

    def finish(self, summary: dict[str, Any]) -> None:
        """Record how the run ended in ``run.json`` and draw the plot."""
        from fedproof.core.plot import plot_metrics

        doc = self.read()
        doc.update(finished=time.time(), summary=summary)
        self._write_json(RUN_JSON, doc)
        plot_metrics(self.metrics(), self.path / PLOT_FILE)
