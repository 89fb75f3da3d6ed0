"""Across machines, on loopback: devices that make their own keys, kits from their public identities, a SuperLink on
loopback behind the Fleet-only gateway with TLS and node auth, the operator's encrypted ledger key, 3 SuperNodes,
2 rounds with DP, HE and the ledger, co-signed models that audit, refused intruders, a client kit that cannot reach
the Control API, and every process stopped by PID. Ports are chosen free at run time; every wait is on readiness
(a port listening, a process exiting), never a sleep."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.base.processes import free_port, stop_pid
from fedproof.launch.provision import Identity, client_init, node_key_pair, provision
from privacy.policy import PrivacyPolicy

pytestmark = pytest.mark.slow  # real processes: see the markers in pyproject.toml

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]
APP = "ab" * 32  # kits that run no app here pin a placeholder (building the real FAB takes ~13 s)
ENV = {**os.environ, "COLUMNS": "200", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def cli(*args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def test_kits_from_device_identities_hold_no_private_client_key(tmp_path: Path) -> None:
    identities = [client_init(tmp_path / f"device-{i}", str(i)) for i in range(2)]
    kits = provision(tmp_path / "kits", 0, "server.example.org", identities=[
        Identity.load(tmp_path / f"device-{i}") for i in range(2)], apps=[APP])
    for cid, kit in kits.clients.items():
        files = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
        assert files == {"ca.crt", "allowlist.json", "kit.json", "policy.json", "apps.json"}  # nothing secret
    from ledger.verification import AllowList

    assert AllowList.load(kits.server / "allowlist.json").keys == {x.client_id: x.signing_key for x in identities}
    assert (kits.server / "node-keys" / "1.pub").read_bytes().strip() == identities[1].node_key
    assert stat.S_IMODE((tmp_path / "device-0" / "signing.pem").stat().st_mode) == 0o600


def test_kits_hold_only_what_each_party_may_hold(tmp_path: Path) -> None:
    kits = provision(tmp_path / "kits", 2, "server.example.org", apps=[APP])
    server = {p.relative_to(kits.server).as_posix() for p in kits.server.rglob("*") if p.is_file()}
    assert server == {"ca.crt", "server.crt", "server.key", "allowlist.json", "kit.json",
                      "node-keys/0.pub", "node-keys/1.pub"}
    for cid, kit in kits.clients.items():
        files = {p.relative_to(kit).as_posix() for p in kit.rglob("*") if p.is_file()}
        assert files == {"ca.crt", "node.key", "node.pub", f"clients/{cid}.pem", "allowlist.json", "kit.json",
                         "policy.json", "apps.json"}  # no CKKS key of any kind: the clients make the threshold key
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
        provision(tmp_path / "kits", 2, "server.example.org", apps=[APP])


def test_declared_weights_are_registered_and_carried_by_each_device(tmp_path: Path) -> None:
    from fedproof.launch.nodes import supernode_command
    from ledger.verification import AllowList

    kits = provision(tmp_path / "kits", 2, "127.0.0.1", declared_examples=6000, apps=[APP])
    assert AllowList.load(kits.server / "allowlist.json").weights == {"0": 6000, "1": 6000}
    command = supernode_command(kits.clients["1"], "127.0.0.1:9092", 9094)
    assert "declared-examples=6000" in command[command.index("--node-config") + 1]
    assert f"privacy-policy=\"{kits.clients['1'] / 'policy.json'}\"" in command[command.index("--node-config") + 1]


def test_server_and_three_edge_clients_over_tls(tmp_path: Path, synthetic_dir: Path) -> None:
    port, devnet_port = free_port(), free_port()
    kits = tmp_path / "kits"
    password = tmp_path / "operator-password"
    password.write_text("correct horse battery staple\n")
    identities = []
    for i in range(3):  # each device makes its own keys and hands over only its public identity
        assert cli("client", "init", "--client-id", str(i), "--out", str(tmp_path / f"device-{i}")).returncode == 0
        identities += ["--identity", str(tmp_path / f"device-{i}" / "identity.json")]
    made = cli("provision", *identities, "--server-host", "127.0.0.1", "--port", str(port), "--out", str(kits),
               "--max-epsilon", "1000", "--max-delta", "1e-3", "--password-file", str(password))
    assert made.returncode == 0, made.stdout + made.stderr  # the policy allows what the run below asks
    started = cli("server", "start", "--kit", str(kits / "server"), "--bind", "127.0.0.1", "--devnet-port",
                  str(devnet_port), "--password-file", str(password))
    pids: list[int] = []
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for i in range(3):  # the operator hands each device the ledger pin
            shutil.copy(kits / "server" / "trust.json", kits / f"client-{i}" / "trust.json")
        control = control_plane_from_a_client_kit(kits / "client-0", port, tmp_path)
        for i in range(3):
            node = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kits / f"client-{i}"), "--identity",
                                     str(tmp_path / f"device-{i}"), "--data-dir",
                                     str(synthetic_dir), "--port", str(free_port())], env=ENV,
                                    stdout=open(tmp_path / f"client-{i}.log", "wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            pids.append(node.pid)
        intruders = {}
        foreign = tmp_path / "foreign"  # a device whose node key the SuperLink never registered
        shutil.copytree(tmp_path / "device-0", foreign)
        (foreign / "node.key").write_bytes(node_key_pair()[0])
        other_ca = provision(tmp_path / "other", 1, "127.0.0.1", port, apps=[APP])  # a cert from another CA
        wrong_ca = tmp_path / "wrong-ca"
        shutil.copytree(kits / "client-1", wrong_ca)
        shutil.copy(other_ca.clients["0"] / "ca.crt", wrong_ca / "ca.crt")
        for name, kit, device in (("foreign key", kits / "client-0", foreign),
                                  ("other CA", wrong_ca, tmp_path / "device-1")):
            log = tmp_path / f"{device.name}-{kit.name}.log"
            intruder = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kit), "--identity", str(device),
                                         "--data-dir", str(synthetic_dir),
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
        assert json.loads((run_dir / "run.json").read_text())["config"]["he"] is True  # threshold CKKS
        assert all(r["train_clients"] == 3 and r["rejected_updates"] == 0 and r["epsilon_max"] > 0
                   and r["upload_bytes_per_param"] <= 16 for r in rows)  # threshold HE: 15 B/param
        lineage = cli("audit", "lineage", str(run_dir / "model.safetensors"), "--json", "--ledger-url",
                      f"http://127.0.0.1:{devnet_port}", "--devnet-dir", str(kits / "server" / "state" / "devnet"))
        assert lineage.returncode == 0, lineage.stdout + lineage.stderr
        assert [(r["round"], r["contributors"]) for r in json.loads(lineage.stdout)] == [
            (2, ["0", "1", "2"]), (1, ["0", "1", "2"])]
        verified = cli("audit", "verify", str(run_dir / "model.safetensors"), "--json", "--ledger-url",
                       f"http://127.0.0.1:{devnet_port}", "--devnet-dir", str(kits / "server" / "state" / "devnet"),
                       "--pin", str(kits / "client-0" / "trust.json"))
        assert verified.returncode == 0 and json.loads(verified.stdout)["verified"], verified.stdout
        owner = run_config_owner(kits / "server", devnet_port)
        assert owner["operator"] == owner["owner"] and owner["owner"] not in owner["dev_accounts"]
        after_the_run(kits, password, run_dir, synthetic_dir, tmp_path)
        foreign = subprocess.run([str(Path(sys.executable).with_name("flwr")), "run",
                                  str(Path(__file__).parent / "foreign_app"), "fedproof", "--stream"],
                                 capture_output=True, text=True, timeout=300,
                                 env={**ENV, "FLWR_HOME": str(kits / "server" / "state" / "flwr-home")})
        replies = [line for line in (foreign.stdout + foreign.stderr).splitlines() if "FOREIGN-REPLY" in line]
        assert len(replies) == 3 and all("not an app this device pins" in line for line in replies), (
            foreign.stdout[-3000:] + foreign.stderr[-2000:])  # the operator's own foreign app: refused, not run
        for what, (code, out) in control.items():
            assert code != 0 and ("404" in out or "not found" in out.lower() or "fail" in out.lower()), (what, out)
        for name, (code, _) in intruders.items():
            assert code != 0, name
        assert "Failed to activate SuperNode" in intruders["foreign key"][1]
        assert "did not sign" in intruders["other CA"][1] and "another provisioning" in intruders["other CA"][1]
    finally:
        for pid in pids:
            stop_pid(pid)
        cli("server", "stop", "--kit", str(kits / "server"))
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(kits).encode() in _cmdline(p)]
    assert not left, "server stop left processes of this kit running"  # the SuperLink, its SuperExec, the gateway


def after_the_run(kits: Path, password: Path, run_dir: Path, data: Path, tmp_path: Path) -> None:
    """README's operator path after `server run`, as an operator, a device and an outsider type it: deploy the final
    model and round 1's with the operator's keys, promote one to a canary then to all, the other after it, roll back;
    devices follow the channel or pull; an outsider with only a device's pin and the published registry verifies."""
    operator = ("--operator", str(kits / "server" / "operator"), "--password-file", str(password))
    registry = tmp_path / "registry"
    artifacts = []
    for chosen in ((), ("--round", "1")):
        done = cli("deploy", "--run", str(run_dir), *chosen, "--registry", str(registry), "--data-dir", str(data),
                   "--max-drop", "100", *operator, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        artifacts.append(next(p.stem for p in registry.glob("*.onnx") if p.stem not in artifacts))
    final, first = artifacts
    release = ("--registry", str(registry), "--tracking-uri", "off", *operator)
    pin = kits / "client-0" / "trust.json"

    def follow(device: str) -> str:
        done = cli("edge", "follow", "--channel", "production", "--device-id", device, "--registry", str(registry),
                   "--install-dir", str(tmp_path / device), "--trust", str(pin))
        assert done.returncode == 0, done.stdout + done.stderr
        current = tmp_path / device / "current.json"
        return json.loads(current.read_text())["artifact_sha256"] if current.is_file() else ""

    from ledger.release import ZERO, Action, ReleaseStatement, in_canary

    trust = json.loads(pin.read_text())
    half = ReleaseStatement(trust["chain_id"], bytes.fromhex(trust["genesis"][2:]),
                            bytes.fromhex(trust["contract"][2:]), 1, Action.PROMOTE, "production",
                            bytes.fromhex(final), ZERO, 5000)
    ids = [f"device-{i}" for i in range(64)]
    inside, outside = next(d for d in ids if in_canary(d, half)), next(d for d in ids if not in_canary(d, half))
    for args, expected in ((("promote", final, "--canary", "50"), [final, ""]), (("promote", final), [final, final]),
                           (("promote", first), [first, first]), (("rollback", final), [final, final])):
        done = cli("release", *args, *release)
        assert done.returncode == 0, done.stdout + done.stderr
        assert [follow(d) for d in (inside, outside)] == expected, args
    pulled = cli("edge", "pull", "latest", "--registry", str(registry), "--install-dir", str(tmp_path / "puller"),
                 "--trust", str(pin))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    outsider = tmp_path / "outsider"  # no devnet, no run directory: the pin and the published registry only
    outsider.mkdir()
    source = json.loads((tmp_path / "puller" / "current.json").read_text())["source_model_sha256"]
    audit = subprocess.run([*FEDPROOF, "audit", "verify", str(registry / "models" / f"{source}.safetensors"),
                            "--pin", str(pin), "--bundles", str(registry / "bundles"), "--json"],
                           capture_output=True, text=True, timeout=120, env={**ENV, "HOME": str(outsider)},
                           cwd=outsider)
    assert audit.returncode == 0 and json.loads(audit.stdout)["verified"], audit.stdout + audit.stderr


def _cmdline(proc: Path) -> bytes:
    try:
        return proc.joinpath("cmdline").read_bytes()
    except OSError:
        return b""


def control_plane_from_a_client_kit(kit: Path, port: int, tmp_path: Path) -> dict[str, tuple[int, str]]:
    """What a client kit's holder gets from the public address: `flwr ls`, `flwr supernode register`, `flwr run`."""
    home = tmp_path / "intruder-flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{port}"\n'
                                      f'root-certificates = "{kit / "ca.crt"}"\n')
    env = {**ENV, "FLWR_HOME": str(home)}
    pub = tmp_path / "intruder.pub"
    pub.write_bytes(node_key_pair()[1])
    out = {}
    for what, args in (("list runs", ["ls", "x"]), ("register a node", ["supernode", "register", str(pub), "x"]),
                       ("submit an app", ["run", str(Path(__file__).resolve().parents[1]), "x"])):
        done = subprocess.run([str(Path(sys.executable).with_name("flwr")), *args], capture_output=True, text=True,
                              env=env, timeout=120)
        out[what] = (done.returncode, done.stdout + done.stderr)
    return out


def run_config_owner(server_kit: Path, devnet_port: int) -> dict:
    from web3 import Web3

    from ledger.contract import LedgerContract
    from ledger.operator import OperatorKeys

    trust = json.loads((server_kit / "trust.json").read_text())
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{devnet_port}"))
    contract = LedgerContract.at(w3, trust["contract"])
    return {"owner": contract._view("owner"), "operator": OperatorKeys(server_kit / "operator").address(),
            "dev_accounts": list(w3.eth.accounts)}
