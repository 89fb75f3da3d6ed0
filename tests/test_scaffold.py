"""fedproof new: a project that passes flwr build, whose task loads through the public interface and runs rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.base.errors import ConfigError, FedproofError
from fedproof.core.config import resolve
from fedproof.launch.provision import app_hashes
from fedproof.launch.scaffold import new_project


def import_task(root: Path, reference: str):
    sys.path.insert(0, str(root))
    try:
        from fedproof.core.task import load_task

        load_task.cache_clear()
        return load_task(reference)
    finally:
        sys.path.remove(str(root))


@pytest.mark.parametrize("template", ["tabular", "image"])
def test_a_new_project_builds_a_fab_and_its_task_loads_its_records(tmp_path: Path, template: str) -> None:
    root = new_project(tmp_path, f"Clinic {template}", template)
    assert root.name == f"clinic-{template}"
    config = resolve(app_dir=root)
    assert config.task == f"clinic_{template}.task:Clinic{template.capitalize()}Task" and config.dp and config.he
    assert len(app_hashes(root)[0]) == 64  # flwr build of the project (Flower's own builder)
    task = import_task(root, config.task)
    data = task.dataset(None)
    assert len(data.train_y) > len(data.test_y) > 0 and set(data.train_y) == {0, 1}
    model = task.model(seed=0)
    import torch

    assert model.predict_raw(torch.from_numpy(data.test_x[:3])).shape == (3, 2)
    with pytest.raises(ConfigError, match="exists"):
        new_project(tmp_path, f"clinic-{template}", template)


def test_a_sample_csv_gives_the_columns_classes_and_statistics(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    sample.write_text("diagnosis,weight,height\nsick,70,170\nwell,80,180\nsick,60,160\nwell,90,190\n")
    root = new_project(tmp_path, "wards", "tabular", sample, label="diagnosis")
    task = import_task(root, resolve(app_dir=root).task)
    assert task.record.columns == ("weight", "height") and task.record.label == "diagnosis"
    assert task.record.classes == ("sick", "well") and task.mean == (75.0, 175.0)
    x, y = task.device_records(sample)
    assert x.tolist() == [[70, 170], [80, 180], [60, 160], [90, 190]] and y.tolist() == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="label column 'outcome'"):
        new_project(tmp_path, "other", "tabular", sample, label="outcome")


def test_a_device_runs_only_its_copy_of_the_pinned_app(tmp_path: Path) -> None:
    from fedproof.cli.server import pinned_app_task

    root = new_project(tmp_path, "clinic", "tabular")
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "apps.json").write_text(json.dumps({"apps": app_hashes(root)}))
    assert pinned_app_task(kit, root) == "clinic.task:ClinicTask"
    (root / "clinic" / "task.py").write_text((root / "clinic" / "task.py").read_text() + "\n# edited\n")
    with pytest.raises(FedproofError, match="does not pin"):
        pinned_app_task(kit, root)


@pytest.mark.slow
def test_the_template_runs_rounds_with_dp_and_he_in_simulation(tmp_path: Path) -> None:
    root = new_project(tmp_path, "clinic", "tabular")
    proc = subprocess.run([sys.executable, "-m", "fedproof.cli", "simulate", "--app", str(root), "--rounds", "2",
                           "--no-ledger", "--run-dir", str(tmp_path / "runs"), "--run-id", "t"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "runs" / "t" / "run.json").read_text())["summary"]
    assert summary["rounds_completed"] == 2 and summary["final_accuracy"] > 0.6
    assert all(0 < e <= 3.0 for e in summary["epsilon_by_client"].values())


@pytest.mark.slow  # an export and a quantization: seconds
def test_a_new_projects_model_deploys_and_a_device_re_derives_it_from_the_apps_own_graph(tmp_path: Path) -> None:
    """A task that does not ship with fedproof: its canonical graphs live in its app (JSON, so its pinned FAB covers
    them), the server refuses a stale one, and a device re-derives the artifact only with the app it names."""
    from fl_client.edge import ArtifactRejected, classify, installed_record, pull, read_inputs
    from fl_server.deploy import DeployError, deploy, write_app_graphs
    from ledger.contract import LedgerContract
    from ledger.manifest import DeploymentKey
    from ledger.signing import SigningKey
    from ledger.trust import LedgerTrust
    from rounds import record_trained_run

    root = new_project(tmp_path, "ward", "tabular")
    reference = resolve(app_dir=root).task
    task = import_task(root, reference)
    sys.path.insert(0, str(root))
    try:
        written = write_app_graphs(root, reference)
        assert [p.name for p in written] == ["ward.mlp-2.onnx.json", "ward.logistic-2.onnx.json"]
        data = task.dataset(None)
        chain = LedgerContract.deploy(LedgerContract.in_memory())
        operator = DeploymentKey.generate()
        record_trained_run(chain, tmp_path / "run", data, {c: SigningKey.generate() for c in ("a", "b")},
                           task=reference)
        with pytest.raises(DeployError, match="give its app"):
            deploy(tmp_path / "run", data, tmp_path / "registry", chain, key=operator)
        deployment = deploy(tmp_path / "run", data, tmp_path / "registry", chain, key=operator, app=root)
        assert deployment.int8_accuracy > 0.6
        trust = LedgerTrust(chain.chain_id, chain.genesis, bytes.fromhex(chain.address[2:]), operator.public_key)
        with pytest.raises(ArtifactRejected, match="pass the app"):
            pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain])
        pull("latest", tmp_path / "registry", tmp_path / "device", trust, [chain], app_graphs=[root / "graphs"])
        rows = read_inputs(root / "data" / "records.csv", installed_record(tmp_path / "device"))
        assert len(classify(tmp_path / "device", rows)) == len(rows)
        # task.py edited (another hidden width) but its graphs not rewritten: the server publishes nothing
        source = (root / "ward" / "task.py").read_text().replace("hidden = 16", "hidden = 8")
        (root / "ward" / "task.py").write_text(source)
        for module in [m for m in sys.modules if m.startswith("ward")]:
            del sys.modules[module]
        from fedproof.core.task import load_task

        load_task.cache_clear()
        with pytest.raises(DeployError, match="stale"):
            deploy(tmp_path / "run", data, tmp_path / "registry2", chain, key=operator, app=root)
    finally:
        sys.path.remove(str(root))
