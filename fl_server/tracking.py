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

from fedproof.core.config import RunConfig
from fedproof.core.rundir import RoundMetrics
from ledger.verification import Domain

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

    def __init__(self, config: RunConfig, run_path: Path, domain: Domain | None = None) -> None:
        self.client, self.run_id = None, ""
        where = domain or config.domain()
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
                "fedproof.chain_id": str(where.chain_id),
                "fedproof.contract": "0x" + where.contract.hex() if any(where.contract) else ""})
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


REGISTERED_MODEL = "fedproof-edge"
"""The MLflow registered model whose versions are the deployed artifacts and whose aliases mirror their stages."""


def mirror_stages(uri: str, stages: dict[bytes, str], registry: Path) -> str:
    """Make MLflow's registry show the on-chain stages: one model version per released artifact (tagged with its
    SHA-256 and stage), aliases ``production``, ``staging`` and ``canary`` on the artifacts in those stages, none on
    retired ones. A view only: devices and audits read the chain. Returns '' or why the mirror failed (a failing
    store never fails a release)."""
    if uri == "off":
        return ""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient

        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)  # else registering a version opens ./mlflow.db to look for its run
        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            if not client.search_registered_models(f"name='{REGISTERED_MODEL}'"):
                client.create_registered_model(REGISTERED_MODEL, description="fedproof's deployed edge artifacts; "
                                               "stages mirror the release statements on chain (the source of truth)")
            versions = {v.tags.get("fedproof.artifact_sha256"): v.version
                        for v in client.search_model_versions(f"name='{REGISTERED_MODEL}'")}
            wanted: dict[str, str] = {}
            for artifact, stage in stages.items():
                sha = artifact.hex()
                if sha not in versions:
                    source = (Path(registry) / f"{sha}.onnx").resolve().as_uri()
                    versions[sha] = client.create_model_version(
                        REGISTERED_MODEL, source, tags={"fedproof.artifact_sha256": sha}).version
                client.set_model_version_tag(REGISTERED_MODEL, versions[sha], "fedproof.stage", stage)
                alias = "canary" if stage.startswith("canary") else stage
                if alias != "retired":
                    wanted[alias] = versions[sha]
            current = client.get_registered_model(REGISTERED_MODEL).aliases
            for alias in set(current) - set(wanted):
                client.delete_registered_model_alias(REGISTERED_MODEL, alias)
            for alias, version in wanted.items():
                client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
        finally:
            mlflow.set_tracking_uri(before)
    except Exception as exc:  # noqa: BLE001 - any store error: the release stands, the mirror says why it lags
        log.warning("MLflow registry not updated (%s: %s); the release is on chain", type(exc).__name__, exc)
        return f"{type(exc).__name__}: {exc}"
    return ""
