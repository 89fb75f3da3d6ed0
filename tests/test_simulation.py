"""End to end: the real CLI runs Flower's simulation engine (Ray) on small generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.core.data import load_dataset
from fedproof.core.model import make_model
from fedproof.core.rundir import RunDirectory
from fedproof.core.features import evaluate

pytestmark = pytest.mark.slow  # real processes: see the markers in pyproject.toml

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDPROOF_DATA_DIR": "", "COLUMNS": "200"}
    return subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def finished_run(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory, devnet) -> Path:
    """The demo's whole path on small data: DP, HE, signed updates, lineage on a real anvil."""
    runs = tmp_path_factory.mktemp("runs")
    proc = run_cli(
        "simulate", "--clients", "3", "--rounds", "2", "--data-dir", str(synthetic_dir),
        "--run-dir", str(runs), "--run-id", "e2e", "--local-epochs", "1", "--batch-size", "16",
        "--noise-multiplier", "0.5", "--target-epsilon", "0", "--delta", "1e-3",
        "--ledger-url", devnet.url, "--devnet-dir", str(devnet.data_dir),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "final test accuracy" in proc.stdout and "Lineage of model" in proc.stdout
    return runs / "e2e"


def audit(devnet, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", *args, "--ledger-url", devnet.url, "--devnet-dir", str(devnet.data_dir), timeout=120)


def test_audit_verify_passes_on_the_runs_model_and_fails_on_a_tampered_copy(finished_run: Path, devnet,
                                                                            tmp_path: Path) -> None:
    model = finished_run / "model.safetensors"
    ok = audit(devnet, "verify", str(model), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["verified"] and report["rounds"] == 2 and report["updates"] == 6
    tampered = tmp_path / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    bad = audit(devnet, "verify", str(tampered), "--bundles", str(finished_run / "ledger"))
    assert bad.returncode == 1 and "no round on this ledger produced" in bad.stdout
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for path in (finished_run / "ledger").glob("round-*.json"):
        (bundles / path.name).write_bytes(path.read_bytes().replace(b'"num_examples":', b'"num_examples":1'))
    altered = audit(devnet, "verify", str(model), "--bundles", str(bundles))
    assert altered.returncode == 1 and "bundle is missing or altered" in altered.stdout


def test_audit_queries_show_lineage_client_and_round(finished_run: Path, devnet) -> None:
    lineage = json.loads(audit(devnet, "lineage", str(finished_run / "model.safetensors"), "--json").stdout)
    assert [r["round"] for r in lineage] == [2, 1]
    assert lineage[0]["parent_model_hash"] == lineage[1]["model_hash"]
    assert all(r["contributors"] == ["0", "1", "2"] and r["updates"] == 3 for r in lineage)
    client = json.loads(audit(devnet, "client", "1", "--bundles", str(finished_run / "ledger"), "--json").stdout)
    assert client["status"] == "registered"
    assert [c["round"] for c in client["contributions"] if c["run"] == "e2e"] == [1, 2]
    eps = [c["epsilon"] for c in client["contributions"] if c["run"] == "e2e"]
    assert 0 < eps[0] < eps[1]  # cumulative, as signed
    record = json.loads(audit(devnet, "round", "e2e", "2", "--json").stdout)
    assert record["updates"] == 3 and record["tx"].startswith("0x")


def test_artifacts_exist(finished_run: Path) -> None:
    for name in ("run.json", "metrics.jsonl", "model.safetensors", "accuracy.png"):
        assert (finished_run / name).stat().st_size > 0, name
    assert (finished_run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((finished_run / "run.json").read_text())
    assert doc["config"]["clients"] == 3 and doc["summary"]["rounds_completed"] == 2


def test_metrics_one_row_per_round_and_beats_chance(finished_run: Path) -> None:
    rows = RunDirectory(finished_run).metrics()
    assert [r.round for r in rows] == [1, 2]
    assert all(r.seconds > 0 and r.train_clients == 3 for r in rows)
    assert rows[-1].accuracy > 0.3  # 10 classes: chance is 0.1 (the server's own test set: central evaluation);
    # DP noise is unpredictable (no seed reaches it), so two rounds on small data land anywhere in ~0.45-0.65
    # DP clients release nothing their accountant does not cover: no train loss, no local validation metrics
    assert all(r.train_loss is None and r.val_accuracy is None and r.evaluate_clients == 0 for r in rows)


def test_the_run_is_mirrored_in_mlflow_with_the_metrics_of_metrics_jsonl(finished_run: Path) -> None:
    from mlflow.tracking import MlflowClient

    from fl_server.tracking import metric_values

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(finished_run / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fedproof").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedproof.run_id"] == "e2e"
    rows = RunDirectory(finished_run).metrics()
    for key in metric_values(rows[0]):
        logged = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(logged) == [(r.round, metric_values(r)[key]) for r in rows], key
    assert {f"ledger.round-{r.round}.tx" for r in rows} <= set(run.data.tags)  # where to check it on chain
    assert {"model.safetensors", "metrics.jsonl"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_saved_model_is_the_final_global_model(finished_run: Path, synthetic_dir: Path) -> None:
    run = RunDirectory(finished_run)
    model = make_model()
    model.load_state_dict(run.load_model())
    data = load_dataset(synthetic_dir)
    loss, accuracy = evaluate(model, data.test_x, data.test_y)
    assert accuracy == pytest.approx(run.metrics()[-1].accuracy)
    assert loss == pytest.approx(run.metrics()[-1].loss, rel=1e-5)


def test_missing_data_fails_fast_with_the_fix(tmp_path: Path) -> None:
    proc = run_cli("simulate", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in proc.stdout


def test_help_lists_commands() -> None:
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0 and "simulate" in proc.stdout


def test_dp_budgets_are_reported_enforced_and_end_the_run(synthetic_dir: Path, tmp_path: Path) -> None:
    """Fixed noise with a budget: the client with less data runs out first and declines while the other
    trains on; once both are out the run ends cleanly, and no client ever passes its budget."""
    proc = run_cli(
        "simulate", "--clients", "2", "--rounds", "8", "--data-dir", str(synthetic_dir), "--run-dir", str(tmp_path),
        "--run-id", "dp", "--local-epochs", "1", "--batch-size", "32", "--dp", "--noise-multiplier", "1.0",
        "--target-epsilon", "3.0", "--delta", "1e-3", "--no-ledger",
        "--no-he",  # rounds with one trainer: under HE nobody may decrypt a sum of one (test_threshold_round.py)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Privacy spent per client" in proc.stdout and "exhausted their privacy budget" in proc.stdout
    run = RunDirectory(tmp_path / "dp")
    rows = run.metrics()
    assert 2 <= len(rows) < 8
    eps = [r.epsilon_max for r in rows]  # the largest signed epsilon among the round's updates
    assert all(e is not None and 0 < e <= 3.0 for e in eps)
    assert any(r.budget_exhausted == 1 and r.train_clients == 1 for r in rows)  # one declined, one trained
    summary = json.loads((run.path / "run.json").read_text())["summary"]
    assert "exhausted" in summary["stopped"]
    assert set(summary["epsilon_by_client"]) == {"0", "1"}
    assert all(0 < e <= 3.0 for e in summary["epsilon_by_client"].values())


def test_delta_too_large_for_a_client_is_refused_before_training(synthetic_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("simulate", "--clients", "3", "--data-dir", str(synthetic_dir), "--run-dir", str(tmp_path),
                   "--delta", "0.05", timeout=120)
    assert proc.returncode == 2 and "below 1/n" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing started, no run directory


def test_a_ledger_that_is_down_stops_the_run_before_training(synthetic_dir: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    proc = run_cli("simulate", "--clients", "2", "--rounds", "1", "--data-dir", str(synthetic_dir), "--run-dir",
                   str(tmp_path), "--run-id", "down", "--no-dp", "--ledger-url", f"http://127.0.0.1:{port}",
                   "--devnet-dir", str(tmp_path / "chain"), timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no Ethereum node answers" in proc.stdout and "fedproof devnet start" in proc.stdout
    assert not (tmp_path / "down" / "metrics.jsonl").exists()


def test_a_killed_run_resumes_from_its_last_recorded_round_with_one_unbroken_lineage(
        synthetic_dir: Path, tmp_path: Path, devnet) -> None:
    import signal
    import time

    args = ["--clients", "2", "--rounds", "3", "-c", "min-contributors=2", "--data-dir", str(synthetic_dir),
            "--run-dir", str(tmp_path),
            "--local-epochs", "1", "--batch-size", "32", "--noise-multiplier", "0.8", "--target-epsilon", "0",
            "--delta", "1e-3", "--ledger-url", devnet.url, "--devnet-dir", str(devnet.data_dir)]
    env = {**os.environ, "FEDPROOF_DATA_DIR": "", "COLUMNS": "200"}
    victim = subprocess.Popen([*FEDPROOF, "simulate", "--run-id", "crash", *args], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "crash" / "ledger" / "round-1.json"
    deadline = time.monotonic() + 300
    while not first.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a file the run writes: the readiness signal, not a guess of duration
    assert first.exists(), "round 1 was never recorded"
    os.killpg(victim.pid, signal.SIGKILL)  # the server, and Ray with it, die mid-run
    victim.wait()
    assert not (tmp_path / "crash" / "ledger" / "round-3.json").exists()
    resumed = run_cli("simulate", "--resume", "crash", "--run-dir", str(tmp_path), "--devnet-dir",
                      str(devnet.data_dir), "--data-dir", str(synthetic_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = RunDirectory(tmp_path / "crash").metrics()
    assert [r.round for r in rows] == [1, 2, 3]
    lineage = json.loads(audit(devnet, "lineage", str(tmp_path / "crash" / "model.safetensors"), "--json").stdout)
    assert [r["round"] for r in lineage] == [3, 2, 1]  # each recorded once, none skipped
    assert all(a["parent_model_hash"] == b["model_hash"] for a, b in zip(lineage, lineage[1:]))
    verified = audit(devnet, "verify", str(tmp_path / "crash" / "model.safetensors"))
    assert verified.returncode == 0, verified.stdout
    from ledger.bundle import RoundBundle

    eps = [RoundBundle.from_bytes((tmp_path / "crash" / "ledger" / f"round-{k}.json").read_bytes()).epsilon_max_scaled
           for k in (1, 2, 3)]  # as the clients signed them
    assert eps[0] < eps[1] < eps[2]  # round 2 composed on round 1: the privacy spent before the crash was kept
    kept = sorted(p.name.split("-")[0] for p in (tmp_path / "client-state").iterdir())  # per client and dataset
    assert kept == ["0", "1"]


def test_a_run_on_its_own_devnet_directory_beside_the_default_devnet(synthetic_dir: Path, tmp_path: Path) -> None:
    """The default devnet holds 8545; a run with --devnet-dir gets a chain (and port) of its own; both audit."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8545)) == 0:
            pytest.skip("something already listens on 127.0.0.1:8545 (this test starts the default devnet there)")
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "FEDPROOF_DATA_DIR": "", "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, timeout=600, env=env)

    own = tmp_path / "own-chain"
    small = ["--clients", "2", "--rounds", "1", "-c", "min-contributors=2", "--data-dir", str(synthetic_dir), "--run-dir",
             str(tmp_path / "runs"),
             "--no-dp", "--local-epochs", "1"]
    try:
        assert cli("devnet", "start").returncode == 0  # the default devnet, in $HOME
        default_run = cli("simulate", *small, "--run-id", "on-default")
        assert default_run.returncode == 0, default_run.stdout + default_run.stderr
        own_run = cli("simulate", *small, "--run-id", "on-own", "--devnet-dir", str(own))
        assert own_run.returncode == 0, own_run.stdout + own_run.stderr
        port = int((own / "anvil.port").read_text())
        assert port != 8545
        status = cli("devnet", "status", "--data-dir", str(own))
        assert f"http://127.0.0.1:{port}" in status.stdout and "31337" in status.stdout
        for run_id, where in (("on-default", []), ("on-own", ["--devnet-dir", str(own)])):
            model = tmp_path / "runs" / run_id / "model.safetensors"
            verified = cli("audit", "verify", str(model), *where, "--json")
            assert verified.returncode == 0 and json.loads(verified.stdout)["verified"], verified.stdout
        # each chain holds only its own run's records
        crossed = cli("audit", "verify", str(tmp_path / "runs" / "on-own" / "model.safetensors"), "--json")
        assert crossed.returncode != 0 and not json.loads(crossed.stdout)["verified"]
    finally:
        cli("devnet", "stop", "--data-dir", str(own))
        cli("devnet", "stop")
