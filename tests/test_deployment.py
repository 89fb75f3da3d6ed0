"""Across machines, on loopback: kits, a SuperLink with TLS and node auth, 3 SuperNodes, 2 rounds with DP, HE and
the ledger, refused intruders, and every process stopped by PID. Ports are chosen free at run time; every wait is
on readiness (a port listening, a process exiting), never a sleep."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.processes import free_port, stop_pid
from fedproof.provision import node_key_pair, provision
from privacy.policy import PrivacyPolicy

pytestmark = pytest.mark.slow  # real processes: see the markers in pyproject.toml

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]
ENV = {**os.environ, "COLUMNS": "200", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def test_kits_hold_only_what_each_party_may_hold(tmp_path: Path) -> None:
    kits = provision(tmp_path / "kits", 2, "server.example.org")
    server = {p.relative_to(kits.server).as_posix() for p in kits.server.rglob("*") if p.is_file()}
    assert server == {"ca.crt", "server.crt", "server.key", "allowlist.json", "kit.json",
                      "node-keys/0.pub", "node-keys/1.pub"}
    for cid, kit in kits.clients.items():
        files = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
        assert files == {"ca.crt", "node.key", "node.pub", f"clients/{cid}.pem", "allowlist.json", "kit.json",
                         "policy.json"}  # no CKKS key of any kind: the clients make the run's threshold key
        assert not any("ctx" in name or "secret" in name for name in files)
        assert PrivacyPolicy.load(kit / "policy.json") == PrivacyPolicy()  # the strict defaults
    secret = [kits.server / "server.key", kits.server / "allowlist.json"] + [
        kit / name for kit in kits.clients.values() for name in ("node.key", f"clients/{kit.name[7:]}.pem")]
    for path in secret:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (kits.clients["0"] / "node.key").read_bytes() != (kits.clients["1"] / "node.key").read_bytes()
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((kits.server / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example.org" in sans.get_values_for_type(x509.DNSName)
    with pytest.raises(Exception, match="--force"):
        provision(tmp_path / "kits", 2, "server.example.org")


def test_declared_weights_are_registered_and_carried_by_each_device(tmp_path: Path) -> None:
    from fedproof.deployment import supernode_command
    from ledger.verification import AllowList

    kits = provision(tmp_path / "kits", 2, "127.0.0.1", declared_examples=6000)
    assert AllowList.load(kits.server / "allowlist.json").weights == {"0": 6000, "1": 6000}
    command = supernode_command(kits.clients["1"], "127.0.0.1:9092", 9094)
    assert "declared-examples=6000" in command[command.index("--node-config") + 1]
    assert f"privacy-policy=\"{kits.clients['1'] / 'policy.json'}\"" in command[command.index("--node-config") + 1]


def test_server_and_three_edge_clients_over_tls(tmp_path: Path, synthetic_dir: Path) -> None:
    port, devnet_port = free_port(), free_port()
    kits = tmp_path / "kits"
    assert cli("provision", "--clients", "3", "--server-host", "127.0.0.1", "--port", str(port), "--out",
               str(kits), "--max-epsilon", "1000", "--max-delta", "1e-3").returncode == 0  # what the run below asks
    started = cli("server", "start", "--kit", str(kits / "server"), "--bind", "127.0.0.1", "--devnet-port",
                  str(devnet_port))
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for i in range(3):
            node = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kits / f"client-{i}"), "--data-dir",
                                     str(synthetic_dir), "--port", str(free_port())], env=ENV,
                                    stdout=open(tmp_path / f"client-{i}.log", "wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            pids.append(node.pid)
        intruders = {}
        foreign = tmp_path / "foreign"  # a kit whose node key the SuperLink never registered
        shutil.copytree(kits / "client-0", foreign)
        (foreign / "node.key").write_bytes(node_key_pair()[0])
        other_ca = provision(tmp_path / "other", 1, "127.0.0.1", port)  # a certificate from another CA
        wrong_ca = tmp_path / "wrong-ca"
        shutil.copytree(kits / "client-1", wrong_ca)
        shutil.copy(other_ca.clients["0"] / "ca.crt", wrong_ca / "ca.crt")
        for name, kit in (("foreign key", foreign), ("other CA", wrong_ca)):
            log = tmp_path / f"{kit.name}.log"
            intruder = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kit), "--data-dir", str(synthetic_dir),
                                         "--port", str(free_port())], env=ENV, stdout=open(log, "wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = intruder.wait(timeout=120)  # refused: the SuperNode gives up and exits
            finally:
                stop_pid(intruder.pid)  # and whatever it spawned
            intruders[name] = (code, log.read_text(errors="replace"))
        run = cli("server", "run", "--kit", str(kits / "server"), "--rounds", "2", "--run-dir", str(tmp_path / "runs"),
                  "--metrics-port", "0", "-c", f"data-dir={synthetic_dir}", "-c", "local-epochs=1",
                  "-c", "batch-size=32", "-c", "noise-multiplier=0.5", "-c", "target-epsilon=0", "-c", "delta=0.001",
                  timeout=420)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if (p / "metrics.jsonl").is_file()]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2]
        assert json.loads((run_dir / "run.json").read_text())["config"]["he-scheme"] == "threshold"
        assert all(r["train_clients"] == 3 and r["rejected_updates"] == 0 and r["epsilon_max"] > 0
                   and r["upload_bytes_per_param"] <= 16 for r in rows)  # threshold HE: 15 B/param
        lineage = cli("audit", "lineage", str(run_dir / "model.safetensors"), "--json", "--ledger-url",
                      f"http://127.0.0.1:{devnet_port}", "--devnet-dir", str(kits / "server" / "state" / "devnet"))
        assert lineage.returncode == 0, lineage.stdout + lineage.stderr
        assert [(r["round"], r["contributors"]) for r in json.loads(lineage.stdout)] == [
            (2, ["0", "1", "2"]), (1, ["0", "1", "2"])]
        for name, (code, _) in intruders.items():
            assert code != 0, name
        assert "Failed to activate SuperNode" in intruders["foreign key"][1]
        assert "CERTIFICATE_VERIFY_FAILED" in intruders["other CA"][1]
    finally:
        for pid in pids:
            stop_pid(pid)
        cli("server", "stop", "--kit", str(kits / "server"))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
