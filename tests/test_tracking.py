"""MLflow mirrors a run: its metrics equal metrics.jsonl; a broken store never fails the run."""

from __future__ import annotations

from pathlib import Path

from fedproof.core.config import RunConfig
from fedproof.core.rundir import RoundMetrics
from fl_server.tracking import RunTracker, metric_values, tracking_uri


def rows() -> list[RoundMetrics]:
    return [RoundMetrics(round=r, accuracy=0.5 + r / 10, loss=1.0 / r, seconds=2.0 * r, epsilon_max=0.3 * r,
                         train_clients=3, rejected_reasons={"no-reply": 1}, step_seconds={"train": 1.5, "central": 0.1})
            for r in (1, 2, 3)]


def test_metrics_params_and_ledger_tags_land_in_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = RunConfig(run_id="run-a", rounds=3, ledger_password_file="/secret/pw")
    tracker = RunTracker(config, tmp_path)
    for row in rows():
        tracker.round(row, bundle_sha256=f"{row.round:064x}")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    tracker.finish(tmp_path, [{"round": 1, "tx_hash": "0xabc"}])
    client = MlflowClient(tracking_uri=tracking_uri(config, tmp_path))
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fedproof.run_id"] == "run-a"
    assert run.data.params["rounds"] == "3" and "ledger-password-file" not in run.data.params
    for key, value in metric_values(rows()[0]).items():
        history = client.get_metric_history(tracker.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r.round, metric_values(r)[key]) for r in rows()], key
    assert run.data.tags["ledger.round-2.bundle_sha256"] == f"{2:064x}" and run.data.tags["ledger.round-1.tx"] == "0xabc"
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["metrics.jsonl"]


def test_tracking_off_or_broken_never_stops_a_run(tmp_path: Path) -> None:
    off = RunTracker(RunConfig(run_id="b", tracking_uri="off"), tmp_path)
    off.round(rows()[0])
    off.finish(tmp_path, [])
    assert off.client is None and not (tmp_path / "mlruns").exists()
    (tmp_path / "blocked").write_text("a file where the store's directory would go")
    broken = RunTracker(RunConfig(run_id="c", tracking_uri=(tmp_path / "blocked").as_uri()), tmp_path)
    broken.round(rows()[0])
    broken.finish(tmp_path, [])
    assert broken.client is None
