"""Flower's deployment engine from startup kits (the nodes of a federation: SuperLink, Fleet gateway, SuperNodes, runs).

Processes are Flower's own (``flower-superlink``, ``flower-supernode``, ``flwr run``); this module only builds
their command lines from a kit, starts them detached with a pidfile and a log, waits on readiness (the port
accepting connections; the node registrations answering), never on sleeps, and stops them by PID.

Each server kit gets its own ``FLWR_HOME`` (``<kit>/state/flwr-home``) holding one SuperLink connection,
``fedproof``, with the kit's CA as root certificate, so ``flwr`` commands never touch the user's config.

The control plane stays with the operator: flwr 1.41 serves its Fleet, Control and Runtime APIs on one port, so
the SuperLink binds the control address (loopback unless the operator names another of its own addresses), and
the public address is served by ``fl_server.fleet_gateway``, which passes the Fleet API only. A client kit's CA
certificate opens the Fleet API and nothing else: no listing runs, registering nodes or submitting apps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedproof.base.errors import ConfigError, FedproofError
from fedproof.base.files import write_atomically
from fedproof.base.processes import Process
from fedproof.launch.provision import read_kit

CONNECTION = "fedproof"
ROOT = Path(__file__).resolve().parents[2]
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              # Flower's processes start their helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name
              "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}


class DeploymentError(FedproofError):
    """A Flower process could not be started, did not become ready, or refused to run."""


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen | None = None,
                  log: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeploymentError(f"process exited with code {process.returncode} before listening on {port}"
                                  + (f":\n{log.log_tail(12)}" if log else ""))
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise DeploymentError(f"nothing listens on {host}:{port} after {timeout:g} s"
                          + (f":\n{log.log_tail(12)}" if log else ""))


@dataclass(frozen=True)
class ServerKit:
    path: Path
    host: str
    port: int
    clients: int

    @classmethod
    def load(cls, kit: Path, host: str | None = None, port: int | None = None) -> ServerKit:
        doc = read_kit(kit, "server")
        return cls(Path(kit).resolve(), host or doc["host"], int(port or doc["port"]), int(doc["clients"]))

    @property
    def state(self) -> Path:
        return self.path / "state"

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr-home"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"FLWR_HOME": str(self.flwr_home)}


def control_address(kit: ServerKit, given: str = "") -> tuple[str, int]:
    """Where the SuperLink itself listens (Control, Runtime and Fleet APIs): ``given``, else loopback on the kit's
    port + 1. Anything but loopback must be an address only the operator reaches."""
    if given:
        host, _, port = given.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"control address {given!r} is not HOST:PORT")
        return host.strip("[]"), int(port)
    return "127.0.0.1", kit.port + 1


class SuperLink:
    """The long-running server: Flower's SuperLink with TLS and SuperNode authentication, from a server kit, on
    the control address; and the Fleet gateway on the public address (``bind``: the kit's port)."""

    def __init__(self, kit: ServerKit, bind: str = "127.0.0.1", insecure: bool = False, control: str = "") -> None:
        self.kit, self.bind, self.insecure = kit, bind, insecure
        self.control = control_address(kit, control)
        if self.control[1] == kit.port and self.control[0] in (bind, "0.0.0.0", "::"):
            raise ConfigError("the control address must differ from the public Fleet address")
        self.process = Process(kit.state / "superlink.pid", kit.state / "superlink.log",
                               marker=_bin("flower-superlink"))
        self.gateway = Process(kit.state / "gateway.pid", kit.state / "gateway.log", marker="fl_server.fleet_gateway")

    def command(self) -> list[str]:
        k = self.kit.path
        security = ["--insecure"] if self.insecure else [
            "--ssl-ca-certfile", str(k / "ca.crt"), "--ssl-certfile", str(k / "server.crt"),
            "--ssl-keyfile", str(k / "server.key"), "--enable-supernode-auth"]
        host, port = self.control
        return [_bin("flower-superlink"), *security, "--host", host, "--port", str(port),
                "--disable-runtime-dependency-installation"]  # state in memory: SQLite on disk cost 3x per round

    def gateway_command(self) -> list[str]:
        k, (host, port) = self.kit.path, self.control
        security = ["--insecure"] if self.insecure else [
            "--certfile", str(k / "server.crt"), "--keyfile", str(k / "server.key"), "--ca-certfile", str(k / "ca.crt")]
        upstream = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return [sys.executable, "-m", "fl_server.fleet_gateway", "--listen", f"{self.bind}:{self.kit.port}",
                "--upstream", f"{upstream}:{port}", *security]

    def running_pid(self) -> int | None:
        return self.process.live_pid()

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, **FLOWER_ENV, **self.kit.env()}
        if self.running_pid() is None:
            self.write_connection()
            process = self.process.spawn(self.command(), env)
            wait_for_port(self.control[0], self.control[1], timeout, process, self.process)
            if not self.insecure:
                self.register_nodes()
        if self.gateway.live_pid() is None:
            process = self.gateway.spawn(self.gateway_command(), {**env, "PYTHONPATH": str(ROOT)})
            wait_for_port("127.0.0.1" if self.bind in ("0.0.0.0", "::") else self.bind, self.kit.port, timeout,
                          process, self.gateway)

    def write_connection(self) -> None:
        security = "insecure = true" if self.insecure else f'root-certificates = "{self.kit.path / "ca.crt"}"'
        host, port = self.control
        write_atomically(self.kit.flwr_home / "config.toml", (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{host}:{port}"\n{security}\n').encode())

    def register_nodes(self) -> list[str]:
        """Register every client's node key with the SuperLink (already registered keys are left as they are)."""
        done = []
        for pub in sorted((self.kit.path / "node-keys").glob("*.pub")):
            proc = subprocess.run([_bin("flwr"), "supernode", "register", str(pub), CONNECTION],
                                  capture_output=True, text=True, env={**os.environ, **FLOWER_ENV, **self.kit.env()},
                                  timeout=60)
            out = proc.stdout + proc.stderr
            if proc.returncode != 0 and "already" not in out.lower():
                raise DeploymentError(f"could not register node key {pub.name}: {out.strip()[-500:]}")
            done.append(pub.stem)
        return done

    def stop(self) -> None:
        self.gateway.stop()
        self.process.stop()


def supernode_command(kit: Path, server: str, port: int, data_dir: str = "", insecure: bool = False,
                      threads: int = 0, identity: Path | None = None, data: Path | None = None, task: str = ""
                      ) -> list[str]:
    """The ``flower-supernode`` command of a client kit: its node key, the CA, its data and its secrets (from the
    device's identity directory, ``fedproof client init``, or the kit when provision generated them), and the
    kit's ledger pin (``trust.json``) when it has one."""
    kit = Path(kit).resolve()
    doc = read_kit(kit, "client")
    cid = doc["client_id"]
    keys = Path(identity).resolve() if identity else None
    signing = keys / "signing.pem" if keys else kit / "clients" / f"{cid}.pem"
    node_key = keys / "node.key" if keys else kit / "node.key"
    if not signing.is_file() or not (insecure or node_key.is_file()):
        raise ConfigError(f"no keys for client {cid}: run `fedproof client init --client-id {cid}` on this device "
                          "and pass --identity (the operator's kit holds no private key)")
    node_config = {"partition-id": doc["partition_id"], "num-partitions": doc["num_partitions"], "client-id": cid,
                   "signing-key": str(signing), "allow-list": str(kit / "allowlist.json"),
                   "state-dir": str(kit / "state"),  # its privacy history survives restarts of the device
                   "privacy-policy": str(kit / "policy.json")}  # what it allows, whatever a run asks
    if doc.get("declared_examples"):
        node_config["declared-examples"] = int(doc["declared_examples"])  # its registered aggregation weight
    if (kit / "trust.json").is_file():
        node_config["ledger-trust"] = str(kit / "trust.json")  # it signs for this chain and contract only
    if data_dir:
        node_config["data-dir"] = data_dir
    if threads:
        node_config["threads"] = threads
    if data is not None:
        node_config["data"] = str(data)  # its own records, which it alone names
    if task:
        node_config["task"] = task  # the only task it trains
    rendered = " ".join(f'{k}={json.dumps(v) if isinstance(v, str) else v}' for k, v in node_config.items())
    security = ["--insecure"] if insecure else ["--root-certificates", str(kit / "ca.crt"),
                                                "--auth-supernode-private-key", str(node_key)]
    return [sys.executable, "-m", "fl_client.supernode", *security, "--superlink", server, "--port", str(port),
            "--node-config", rendered, "--max-retries", "5", "--max-wait-time", "60",
            "--isolation", "process"]  # the ClientApp is fl_client.app_runner: the pinned, installed app only


def app_runner_command(kit: Path, port: int, parent_pid: int) -> list[str]:
    """The device's ClientApp executor beside its SuperNode (``fl_client.app_runner``)."""
    pinned = Path(kit).resolve() / "apps.json"
    if not pinned.is_file():
        raise ConfigError(f"{kit} pins no app (apps.json): re-provision the kit; a device runs no app without one")
    return [sys.executable, "-m", "fl_client.app_runner", "--runtime-api-address", f"127.0.0.1:{port}",
            "--pinned-apps", str(pinned), "--parent-pid", str(parent_pid)]


def start_on_superlink(kit: ServerKit, overrides: dict[str, object], log: Path, app: Path | None = None
                       ) -> subprocess.Popen:
    """``flwr run --stream`` of ``app`` (default: this project) on the kit's SuperLink, with run-config
    ``overrides``; its output goes to ``log`` (the caller watches the run directory, not Flower's log lines)."""
    rendered = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in overrides.items())
    command = [_bin("flwr"), "run", str(Path(app).resolve() if app else ROOT), CONNECTION, "--stream", "-c", rendered]
    env = {**os.environ, **FLOWER_ENV, **kit.env(), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    if not (kit.flwr_home / "config.toml").is_file():
        raise ConfigError(f"no SuperLink connection in {kit.flwr_home}: start the server first (fedproof server start)")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
