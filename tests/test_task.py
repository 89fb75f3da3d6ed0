"""Bring your own task: a task defined outside fedproof trains through the public interface alone, and a device
trains only the task (and the data) it names itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedproof.base.errors import ConfigError
from fedproof.core.client_data import own_client_data
from fedproof.core.config import RunConfig
from fedproof.core.task import Task, load_task
from fl_client.client_app import device_task, own_data
from fl_client.device import Device

TESTS = Path(__file__).resolve().parent


def device(**kw) -> Device:
    base = dict(client_id="0", on_device=True, partition_id=0, num_partitions=1, signing_key=None, allow_list=None,
                policy=None, pin=None, data_dir="", state_dir=None, declared_examples=None, threads=0)
    return Device(**{**base, **kw})


def test_built_in_and_user_tasks_load_by_name_and_a_wrong_name_is_a_clear_error() -> None:
    assert load_task("fashion-mnist").model_name() == "scatternet"
    assert load_task("breast-cancer").model("logistic", seed=0).head.in_features == 30
    assert load_task("tiny_table:TinyTable").name == "tiny-table"
    with pytest.raises(ConfigError, match="neither a built-in task"):
        load_task("mnist")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_task("no_such_package.task:Task")
    with pytest.raises(ConfigError, match="not a fedproof.core.task.Task"):
        load_task("json:JSONDecoder")
    with pytest.raises(ConfigError, match="is not one of task tiny-table's"):
        load_task("tiny_table:TinyTable").model("cnn")


def test_a_device_trains_only_the_task_it_names_and_loads_no_module_a_server_names() -> None:
    run = RunConfig(task="tiny_table:TinyTable")
    assert device_task(run, device(task="tiny_table:TinyTable")).name == "tiny-table"
    with pytest.raises(ConfigError, match="this device trains 'breast-cancer'"):
        device_task(run, device(task="breast-cancer"))
    with pytest.raises(ConfigError, match="loads only built-in tasks"):
        device_task(run, device())  # a device that names no task: a server may not make it import a module
    assert device_task(RunConfig(task="breast-cancer"), device()).name == "breast-cancer"
    assert device_task(run, device(on_device=False)).name == "tiny-table"  # the operator's simulated client


def test_a_devices_own_csv_is_its_data_split_by_the_runs_val_fraction(tmp_path: Path) -> None:
    task = load_task("tiny_table:TinyTable")
    path = tmp_path / "site.csv"
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    path.write_text("y,d,c,b,a\n" + "".join(f"{'yes' if i % 2 else 'no'},{r[3]},{r[2]},{r[1]},{r[0]}\n"
                                           for i, r in enumerate(x)))
    data = own_data(RunConfig(val_fraction=0.2), task, path)
    assert len(data.train_y) == 8 and len(data.val_y) == 2 and data.num_classes == 2
    assert sorted(np.concatenate([data.train_x, data.val_x])[:, 0].tolist()) == x[:, 0].tolist()
    with pytest.raises(ConfigError, match="outside 0..1"):
        own_client_data(RunConfig(), (x, np.array([0, 1, 2] + [0] * 7)), 2, "id")


def test_a_task_is_small_and_typed() -> None:
    """What a user implements: the records, the models and the data; nothing else is required."""
    assert sorted(Task.__abstractmethods__) == ["build", "dataset"]


@pytest.fixture
def own_devnet(tmp_path: Path):
    """A chain of this test's own: a devnet other tests registered more clients on would (rightly) refuse a key
    held by this run's three."""
    import socket

    from ledger.devnet import Devnet

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chain = Devnet(tmp_path / "devnet", port=port)
    chain.start()
    yield chain
    chain.stop()


@pytest.mark.slow
def test_a_user_task_runs_two_rounds_with_dp_he_and_the_ledger_through_the_public_interface(
        tmp_path: Path, own_devnet) -> None:
    devnet = own_devnet
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--task", "tiny_table:TinyTable", "--clients", "3",
         "--rounds", "2", "--run-dir", str(tmp_path), "--run-id", "byo", "--local-epochs", "2", "--batch-size",
         "32", "--lr", "0.5", "--noise-multiplier", "0.8", "--target-epsilon", "0", "--delta", "1e-3",
         "--ledger-url", devnet.url, "--devnet-dir", str(devnet.data_dir)],
        capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "byo" / "run.json").read_text())
    assert doc["config"]["task"] == "tiny_table:TinyTable" and doc["config"]["he"] and doc["config"]["dp"]
    assert doc["summary"]["rounds_completed"] == 2 and doc["summary"]["final_accuracy"] > 0.6
    assert all(0 < eps < 100 for eps in doc["summary"]["epsilon_by_client"].values())
    bundle = json.loads((tmp_path / "byo" / "ledger" / "round-2.json").read_text())
    assert len(bundle["updates"]) == 3 and bundle["threshold"] >= 2  # signed updates, co-signed by key holders
    audit = subprocess.run([sys.executable, "-m", "fedproof.cli", "audit", "verify",
                            str(tmp_path / "byo" / "model.safetensors"), "--ledger-url", devnet.url,
                            "--devnet-dir", str(devnet.data_dir), "--json"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert audit.returncode == 0 and json.loads(audit.stdout)["verified"], audit.stdout + audit.stderr
    # then deploy it (int8) and predict on a device from a CSV of raw rows, through the same public interface
    from fl_client.edge import classify, installed_record, pull, read_inputs
    from fl_server.deploy import deploy, write_app_graphs
    from ledger.contract import LedgerContract
    from ledger.manifest import DeploymentKey
    from ledger.trust import LedgerTrust

    write_app_graphs(tmp_path / "app", "tiny_table:TinyTable")  # the task's canonical graphs, as its app ships them
    chain = LedgerContract.at(LedgerContract.connect(devnet.url), doc["config"]["ledger-contract"])
    operator, data = DeploymentKey.generate(), load_task("tiny_table:TinyTable").dataset(None)
    deployment = deploy(tmp_path / "byo", data, tmp_path / "registry", chain, key=operator, app=tmp_path / "app")
    assert deployment.int8_accuracy > 0.6
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), operator.public_key)
    pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain],
         app_graphs=[tmp_path / "app" / "graphs"])
    rows = tmp_path / "rows.csv"
    rows.write_text("d,c,b,a\n" + "".join(f"{r[3]},{r[2]},{r[1]},{r[0]}\n" for r in data.test_x[:50]))
    predicted = classify(tmp_path / "device", read_inputs(rows, installed_record(tmp_path / "device")))
    assert (predicted == data.test_y[:50]).mean() > 0.6


def test_the_tabular_task_deploys_int8_and_a_device_predicts_csv_rows_and_sees_drift(tmp_path: Path) -> None:
    """Deploy, pull (re-deriving the artifact from the co-signed model), predict from a CSV of raw rows, and a
    drift check on rows whose size features are scaled, for a task of another kind than images."""
    import csv

    import torch

    from fl_client.edge import classify, installed_record, monitor, pull, read_inputs
    from fl_server.deploy import deploy
    from ledger.contract import LedgerContract
    from ledger.manifest import DeploymentKey
    from ledger.signing import SigningKey
    from ledger.trust import LedgerTrust
    from rounds import record_trained_run

    task = load_task("breast-cancer")
    data = task.dataset(None)
    chain = LedgerContract.deploy(LedgerContract.in_memory())
    operator = DeploymentKey.generate()
    model = record_trained_run(chain, tmp_path / "run", data, {c: SigningKey.generate() for c in ("a", "b")},
                               task="breast-cancer")
    deployment = deploy(tmp_path / "run", data, tmp_path / "registry", chain, key=operator)
    assert deployment.int8_accuracy >= 0.9 and deployment.fp32_accuracy - deployment.int8_accuracy <= 0.01
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), operator.public_key)
    installed = pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain])
    assert installed.graph == "mlp-2" and installed_record(tmp_path / "device").columns == task.record.columns
    rows = tmp_path / "patients.csv"
    with rows.open("w", newline="") as fh:  # raw rows, columns in another order, no label: what a clinic has
        out = csv.writer(fh)
        order = list(reversed(task.record.columns))
        out.writerow(order)
        for row in data.test_x:
            out.writerow([f"{row[task.record.columns.index(c)]:.8g}" for c in order])
    predicted = classify(tmp_path / "device", read_inputs(rows, installed_record(tmp_path / "device")))
    with torch.no_grad():
        expected = model.predict_raw(torch.from_numpy(data.test_x)).argmax(1).numpy()
    assert (predicted == expected).mean() >= 0.98
    assert not monitor(tmp_path / "device", data.test_x, predicted).drift
    sizes = [i for i, c in enumerate(task.record.columns) if any(w in c for w in ("radius", "perimeter", "area"))]
    shifted = data.test_x.copy()
    shifted[:, sizes] *= 1.3
    assert monitor(tmp_path / "device", shifted, classify(tmp_path / "device", shifted)).drift


@pytest.mark.slow  # two deployments
def test_a_device_refuses_a_model_of_another_task_released_to_it(tmp_path: Path, synthetic_dir: Path) -> None:
    """The operator (its key signs, its account records) deploys a model of another task and a device of the first
    pulls it: refused, the installed model stays."""
    from fedproof.core.data import load_dataset
    from fl_client.edge import ArtifactRejected, current_model, pull
    from fl_server.deploy import deploy
    from ledger.contract import LedgerContract
    from ledger.manifest import DeploymentKey
    from ledger.signing import SigningKey
    from ledger.trust import LedgerTrust
    from rounds import record_trained_run

    chain, operator = LedgerContract.deploy(LedgerContract.in_memory()), DeploymentKey.generate()
    clients = {c: SigningKey.generate() for c in ("a", "b")}
    tabular = load_task("breast-cancer").dataset(None)
    record_trained_run(chain, tmp_path / "bc", tabular, clients, run_id="bc", task="breast-cancer")
    deploy(tmp_path / "bc", tabular, tmp_path / "registry", chain, key=operator)
    trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), operator.public_key)
    installed = pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain])
    images = load_dataset(synthetic_dir)
    record_trained_run(chain, tmp_path / "fm", images, clients, run_id="fm")
    other = deploy(tmp_path / "fm", images, tmp_path / "registry", chain, key=operator)
    with pytest.raises(ArtifactRejected, match="a model of another task"):
        pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain])
    assert current_model(tmp_path / "device").artifact_sha256 == installed.artifact_sha256 != other.artifact_sha256
