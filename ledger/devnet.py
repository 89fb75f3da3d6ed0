"""The local devnet: one anvil process per data directory, detached, on 127.0.0.1 only, that keeps its chain.

Layout of a data directory::

    chain.json       anvil's state (--state): loaded at start, written every --state-interval s and on SIGTERM
    chain.json.bak   copy of chain.json made at each start (a SIGKILL during a write can leave chain.json cut off)
    anvil.pid        pid of the running anvil
    anvil.port       the port this directory's devnet listens on (127.0.0.1): chosen once, reused on restart
    anvil.log        anvil's output (appended)
    deployment.json  {"chain_id", "address", "artifact_sha256"} of the ledger contract deployed on this chain

A data directory owns its port. Given none, the default directory keeps 8545 and any other takes a free
loopback port at its first start; either way the port is recorded and reused, so a second devnet (a
benchmark's, a test's, another project's) never collides with the first.

Why: anvil is fast and persists to a file; eth-tester cannot persist at all. anvil's dev accounts are unlocked and
derived from a public mnemonic, so it listens on loopback only. A SIGTERM makes anvil write its state; a SIGKILL
loses at most the last ``state_interval`` seconds, the period of its background dumps.

The binary is the one npm installs in ``contracts/node_modules`` (``@foundry-rs/anvil``, pinned 1.7.1, whose binary
comes from the platform package ``@foundry-rs/anvil-<os>-<arch>``). The platform binary is run directly rather than
through npm's ``.bin/anvil`` node wrapper: a SIGKILL of the wrapper would leave the real anvil running, orphaned.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from web3 import Web3

from fedproof.base.files import write_atomically
from fedproof.base.processes import Process, alive, free_port, stop_pid
from ledger import errors
from ledger.artifact import load_artifact
from ledger.chain import node_errors
from ledger.contract import LedgerContract
from ledger.defaults import DEFAULT_DATA_DIR  # noqa: F401 - the devnet's default home, re-exported

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = REPO_ROOT / "contracts" / "node_modules"
DEFAULT_CHAIN_ID = 31337
DEFAULT_PORT = 8545
"""The default data directory's port (what wallets and tools expect of a local node)."""
HOST = "127.0.0.1"
MAX_DEPLOYMENT_FILE_BYTES = 4096

_NPM_PLATFORM = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}
_NPM_ARCH = {"x86_64": "amd64", "AMD64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_anvil() -> str:
    """The anvil to run: $FEDPROOF_ANVIL, then contracts/node_modules (npm), then ``anvil`` on PATH."""
    override = os.environ.get("FEDPROOF_ANVIL")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise errors.AnvilNotFound(f"$FEDPROOF_ANVIL is {override!r}, which is not an executable file")
        return override
    system, machine = _NPM_PLATFORM.get(platform.system()), _NPM_ARCH.get(platform.machine())
    candidates = []
    if system and machine:
        exe = "anvil.exe" if system == "win32" else "anvil"
        candidates.append(NODE_MODULES / "@foundry-rs" / f"anvil-{system}-{machine}" / "bin" / exe)
    candidates.append(NODE_MODULES / ".bin" / "anvil")  # npm's node wrapper: works, but see the module docstring
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise errors.AnvilNotFound(
        "anvil was not found: run `make setup` (it runs `npm ci --prefix contracts`, which installs the pinned "
        "@foundry-rs/anvil), or point $FEDPROOF_ANVIL at an anvil binary"
    )


@dataclass(frozen=True)
class DevnetStatus:
    running: bool
    pid: int | None
    url: str
    """'' when this directory has no port yet (it never ran, and none was given)."""
    block_number: int | None
    data_dir: Path
    port: int = 0
    chain_id: int | None = None


class Devnet:
    """Start, stop and inspect the anvil of one data directory. Safe to use from separate processes (CLI calls)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        state_interval: int = 1,
        anvil: str | None = None,
        chain_id: int = DEFAULT_CHAIN_ID,
    ) -> None:
        if port is not None and not 0 < int(port) < 65536:
            raise errors.LedgerValueError(f"port must be in 1..65535, got {port}")
        if int(state_interval) < 1:
            raise errors.LedgerValueError(f"state_interval must be at least 1 second, got {state_interval}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port_file = self.data_dir / "anvil.port"
        self.port = int(port) if port is not None else self._recorded_port() or (
            DEFAULT_PORT if self.data_dir == Path(DEFAULT_DATA_DIR).expanduser().resolve() else 0)
        """0 until start() picks one: a directory other than the default that never ran and got no port."""
        self.state_interval = int(state_interval)
        self.chain_id = int(chain_id)
        self._anvil = anvil
        self.state_file = self.data_dir / "chain.json"
        self.pid_file = self.data_dir / "anvil.pid"
        self.log_file = self.data_dir / "anvil.log"
        self.process = Process(self.pid_file, self.log_file, marker=str(self.state_file))

    # ----------------------------------------------------------------------------- public

    @property
    def url(self) -> str:
        if not self.port:
            raise errors.DevnetError(f"no devnet has run in {self.data_dir}, so it has no port yet: start it with "
                                     f"`fedproof devnet start --data-dir {self.data_dir}`")
        return f"http://{HOST}:{self.port}"

    def status(self) -> DevnetStatus:
        pid = self._live_pid()
        if not self.port:
            return DevnetStatus(False, pid, "", None, self.data_dir)
        block = _rpc(self.url, "eth_blockNumber") if pid is not None else None
        chain = _rpc(self.url, "eth_chainId") if isinstance(block, str) else None
        return DevnetStatus(
            running=pid is not None and block is not None,
            pid=pid,
            url=self.url,
            block_number=int(block, 16) if isinstance(block, str) else None,
            data_dir=self.data_dir,
            port=self.port,
            chain_id=int(chain, 16) if isinstance(chain, str) else None,
        )

    def start(self, timeout: float = 20) -> DevnetStatus:
        """Start anvil detached and wait until it answers; if this data directory's anvil already runs, reuse it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid = self._live_pid()
        if pid is not None:
            status = self._wait_ready(pid, min(timeout, 5.0))
            if status is not None:
                return status
            raise errors.DevnetError(
                f"anvil (pid {pid}) of {self.data_dir} is running but does not answer at {self.url}; "
                "was it started with another --port? stop it first with `fedproof devnet stop`"
            )
        if not self.port:
            self.port = free_port()  # this directory's from now on: recorded below, reused on restart
        self._check_port_free()
        self._check_state_file()
        anvil = self._anvil or find_anvil()
        command = [
            anvil,
            "--host", HOST,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--state", str(self.state_file),
            "--state-interval", str(self.state_interval),
        ]  # fmt: skip
        try:
            proc = self.process.spawn(command)
        except OSError as exc:
            raise errors.DevnetStartFailed(f"cannot run {anvil}: {exc.strerror}") from exc
        status = self._wait_ready(proc.pid, timeout)
        if status is not None:
            write_atomically(self.port_file, f"{self.port}\n".encode())
            return status
        code = proc.poll()
        if code is None:
            stop_pid(proc.pid, 2.0)
        self.pid_file.unlink(missing_ok=True)
        what = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f} s"
        raise errors.DevnetStartFailed(
            f"anvil {what}; its log ({self.log_file}) ends with:\n{self.process.log_tail()}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (anvil writes its state), wait; SIGKILL only if it is still alive after ``timeout``."""
        self.process.stop(timeout)

    def _recorded_port(self) -> int | None:
        try:
            text = self.port_file.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise errors.DevnetError(f"cannot read {self.port_file}: {exc.strerror}") from exc
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise errors.DevnetError(f"{self.port_file} does not hold a port number; delete it (a new port is "
                                     "chosen at the next start) or pass --port")
        return int(text)

    def _live_pid(self) -> int | None:
        try:
            return self.process.live_pid()
        except OSError as exc:
            raise errors.DevnetError(f"cannot read {self.pid_file}: {exc.strerror}") from exc

    def _wait_ready(self, pid: int, timeout: float) -> DevnetStatus | None:
        deadline = time.monotonic() + timeout
        while True:
            block = _rpc(self.url, "eth_blockNumber")
            if isinstance(block, str):
                chain = _rpc(self.url, "eth_chainId")
                return DevnetStatus(True, pid, self.url, int(block, 16), self.data_dir, self.port,
                                    int(chain, 16) if isinstance(chain, str) else None)
            if not alive(pid) or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    # ----------------------------------------------------------------------------- checks

    def _check_port_free(self, grace: float = 1.0) -> None:
        """Refuse a port that another program listens on. A just-killed anvil's sockets can hold the port for a
        moment (its listener still completes a handshake, an orphaned FIN-WAIT socket fails a test bind), so a
        busy port is re-checked for ``grace`` seconds before it counts as taken."""
        deadline = time.monotonic() + grace
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # Same option anvil (tokio) sets, so sockets of the previous anvil in TIME_WAIT do not count.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, self.port))
                    return
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise errors.DevnetError(f"cannot use port {self.port} on {HOST}: {exc.strerror}") from exc
            if not _accepts_connections(self.port):
                return  # only closing connections hold it: anvil itself can bind the port
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        who = "an Ethereum node" if _rpc(self.url, "eth_chainId", timeout=0.5) is not None else "another program"
        raise errors.DevnetPortInUse(
            f"port {self.port} on {HOST} is already in use by {who} not started from {self.data_dir}; "
            "stop it, or give this devnet another port (--port; --devnet-port on simulate and server start)"
        )

    def _check_state_file(self) -> None:
        """anvil refuses to start on a cut-off state file; say so clearly, and keep a copy of a good one."""
        if not self.state_file.exists():
            return
        try:
            with open(self.state_file, "rb") as f:
                json.load(f)
        except (OSError, ValueError) as exc:
            backup = self.state_file.with_name(self.state_file.name + ".bak")
            hint = (
                f"restore the copy taken at the previous start with `cp {backup} {self.state_file}`"
                if backup.exists()
                else "move it away to start a new, empty chain"
            )
            raise errors.DevnetStateCorrupt(
                f"the saved chain {self.state_file} is damaged ({exc}); anvil was probably killed while writing it. "
                f"{hint}"
            ) from exc
        shutil.copyfile(self.state_file, self.state_file.with_name(self.state_file.name + ".bak"))


# --------------------------------------------------------------------------------------------- deployment memory


def remember_contract(data_dir: Path, contract: LedgerContract) -> None:
    """Write ``<data_dir>/deployment.json`` so the next run on this chain uses the same contract."""
    record = {"address": contract.address, "artifact_sha256": contract.artifact.sha256, "chain_id": contract.chain_id}
    path = Path(data_dir).expanduser() / "deployment.json"
    write_atomically(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def remembered_contract(data_dir: Path, w3: Web3, sender: str | None = None) -> LedgerContract | None:
    """The contract remembered for this chain, or None if there is none, it is for another chain or another
    build of the contract (artifact hash), or its code is gone (the chain was reset)."""
    path = Path(data_dir).expanduser() / "deployment.json"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_DEPLOYMENT_FILE_BYTES:
        raise errors.DevnetError(f"{path} is {size} bytes, too large to be a deployment record; delete it")
    try:
        record = json.loads(path.read_bytes())
        chain_id, address, artifact_sha = record["chain_id"], record["address"], record["artifact_sha256"]
    except (ValueError, TypeError, KeyError) as exc:
        raise errors.DevnetError(f"{path} is not a deployment record ({exc}); delete it to deploy anew") from exc
    if not isinstance(chain_id, int) or not isinstance(address, str) or not Web3.is_address(address):
        raise errors.DevnetError(f"{path} has a malformed chain_id or address; delete it to deploy anew")
    with _node(w3):
        current_chain = int(w3.eth.chain_id)
    if chain_id != current_chain or artifact_sha != load_artifact().sha256:
        return None
    try:
        return LedgerContract.at(w3, address, sender=sender)
    except errors.ContractNotFound:  # also ContractMismatch: not our code there any more
        return None


def ensure_contract(w3: Web3, data_dir: Path, sender: str | None = None) -> LedgerContract:
    """The remembered contract of this chain, or a new deployment by ``sender`` (then remembered)."""
    contract = remembered_contract(data_dir, w3, sender)
    if contract is None:
        contract = LedgerContract.deploy(w3, sender=sender)
        remember_contract(data_dir, contract)
    return contract


# --------------------------------------------------------------------------------------------- helpers


def _node(w3: Web3):  # noqa: ANN202 - a context manager: a node that is down -> LedgerUnavailable
    return node_errors(str(getattr(w3.provider, "endpoint_uri", None) or "the ledger node"))


def _accepts_connections(port: int) -> bool:
    """Whether something listens on HOST:port (a refused connection means nothing does)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            # With no listener, the kernel may pick the port itself as the ephemeral source port and connect the
            # socket to itself (TCP simultaneous open): that is not a listener either.
            return sock.getsockname() != sock.getpeername()
    except ConnectionRefusedError:
        return False
    except OSError:
        return True  # timed out or stranger: assume the port is held


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def _rpc(url: str, method: str, timeout: float = 1.0) -> object | None:
    """One JSON-RPC call; None if nothing (or nothing Ethereum-like) answers. Used for liveness, not for work."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            reply = json.loads(response.read(65536))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return reply.get("result") if isinstance(reply, dict) else None


__all__ = [
    "Devnet",
    "DevnetStatus",
    "ensure_contract",
    "find_anvil",
    "remember_contract",
    "remembered_contract",
]
