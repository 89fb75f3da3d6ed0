"""Every run in MLflow: its settings, each round's metrics, the privacy spent, the model and each round's
ledger record.

MLflow is a mirror for the tools people already use (its UI, its model registry); the chain stays the source of
truth. The tags name each round's bundle hash and ledger transaction, so whatever MLflow shows can be checked
with ``fedproof audit``; nothing is trusted because MLflow says it. By default the run is logged to a file store
in the run directory (``<run>/mlruns``: no server needed; MLflow 3.17 keeps that store in maintenance mode, so
``MLFLOW_ALLOW_FILE_STORE`` is set for it); ``tracking-uri`` names any other MLflow URI (``sqlite:///...``,
``http://...``), or ``off``. A tracking store that fails never fails the run: the error is logged and tracking stops.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

from fedproof.config import RunConfig
from fedproof.rundir import RoundMetrics

log = logging.getLogger(__name__)
EXPERIMENT = "fedproof"


def tracking_uri(config: RunConfig, run_path: Path) -> str:
    return config.tracking_uri or (Path(run_path) / "mlruns").resolve().as_uri()


def metric_values(row: RoundMetrics) -> dict[str, float]:
    """The row's numbers, by metrics.jsonl name (``step_seconds.train`` ...); booleans and text are not metrics."""
    out: dict[str, float] = {}
    for key, value in asdict(row).items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round":
            out[key] = float(value)
    return out


class RunTracker:
    """One MLflow run for one fedproof run (a resumed run adds rounds to a new MLflow run tagged ``resumed``)."""

    def __init__(self, config: RunConfig, run_path: Path) -> None:
        self.client, self.run_id = None, ""
        if config.tracking_uri == "off":
            return
        try:
            from mlflow.tracking import MlflowClient

            if not config.tracking_uri:  # MLflow 3.17 keeps its file store only for those who ask for it
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.client = MlflowClient(tracking_uri=tracking_uri(config, run_path))
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
            run = self.client.create_run(experiment_id, run_name=config.run_id, tags={
                "fedproof.run_id": config.run_id, "fedproof.resumed": str(config.resume).lower(),
                "fedproof.chain_id": str(config.chain_id), "fedproof.contract": config.ledger_contract})
            self.run_id = run.info.run_id
            params = {k: str(v)[:500] for k, v in config.to_mapping().items()
                      if "password" not in k and "operator" not in k}
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self._batch(params=dict(list(params.items())[i:i + 100]))
        except Exception as exc:  # noqa: BLE001 - any store error: tracking stops, training does not
            self._give_up(exc)

    def round(self, row: RoundMetrics, bundle_sha256: str = "") -> None:
        if self.client is None:
            return
        tags = {f"ledger.round-{row.round}.bundle_sha256": bundle_sha256} if bundle_sha256 else {}
        self._batch(metrics=metric_values(row), step=row.round, tags=tags)

    def finish(self, run_path: Path, receipts: list[dict], stopped: str = "") -> None:
        if self.client is None:
            return
        tags = {f"ledger.round-{r['round']}.tx": str(r["tx_hash"]) for r in receipts}
        if stopped:
            tags["fedproof.stopped"] = stopped[:500]
        self._batch(tags=tags)
        try:
            for name in ("model.safetensors", "metrics.jsonl", "run.json", "accuracy.png"):
                if (Path(run_path) / name).is_file():
                    self.client.log_artifact(self.run_id, str(Path(run_path) / name))
            self.client.set_terminated(self.run_id)
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)

    def _batch(self, metrics: dict[str, float] | None = None, step: int = 0, params: dict[str, str] | None = None,
               tags: dict[str, str] | None = None) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
                                  params=[Param(k, v) for k, v in (params or {}).items()],
                                  tags=[RunTag(k, v) for k, v in (tags or {}).items()])
        except Exception as exc:  # noqa: BLE001
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        log.warning("MLflow tracking stopped (%s: %s); the run goes on, its record is in the run directory",
                    type(exc).__name__, exc)
        self.client = None
