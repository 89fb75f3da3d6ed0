"""Stopping a device stops all of it: `fedproof client` is a SuperNode and the executor beside it, and neither may
outlive the other, whatever the signal and however it was started (a background job ignores SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedproof.base.processes import free_port
from fedproof.launch.provision import Identity, client_init, provision

pytestmark = pytest.mark.slow  # real processes

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A client kit and its device's keys, for a server nobody runs."""
    tmp = tmp_path_factory.mktemp("device")
    client_init(tmp / "identity", "0")
    kits = provision(tmp / "kits", 1, "127.0.0.1", free_port(), apps=["ab" * 32],
                     identities=[Identity.load(tmp / "identity" / "identity.json")])
    return kits.clients["0"], tmp / "identity"


def _processes(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes() and \
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _start(kit: Path, identity: Path, log: Path, background: bool) -> subprocess.Popen:
    """``fedproof client`` as a shell starts it: in the foreground, or as a background job (SIGINT ignored)."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None
    process = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kit), "--identity", str(identity),
                                "--server", f"127.0.0.1:{free_port()}", "--port", str(free_port())],
                               env=ENV, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=ignore)
    assert _until(lambda: _processes(str(kit.resolve() / "apps.json")) or process.poll() is not None, 60)
    # both running, past their imports (a signal while Python still compiles a module is Python's own traceback)
    _until(lambda: all(m in log.read_text(errors="replace") for m in ("fedproof-app-runner", "SuperNode"))
           or process.poll() is not None, 60)
    return process


@pytest.mark.parametrize("how", ["sigterm-background", "sigkill-background", "ctrl-c"])
def test_no_part_of_a_device_outlives_its_supernode(device, tmp_path: Path, how: str) -> None:
    kit, identity = device
    log = tmp_path / "client.log"
    node = _start(kit, identity, log, background=how != "ctrl-c")
    runners = _processes(str(kit.resolve() / "apps.json"))
    assert runners, log.read_text(errors="replace")
    if how == "ctrl-c":
        os.killpg(node.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
    else:
        node.send_signal(signal.SIGTERM if how == "sigterm-background" else signal.SIGKILL)
    node.wait(timeout=60)
    assert _until(lambda: not any(pid in _processes(str(kit.resolve() / "apps.json")) for pid in runners), 15), \
        f"the executor outlived its SuperNode ({how})"
    assert "Traceback" not in log.read_text(errors="replace")


def test_a_supernode_that_fails_to_start_takes_its_executor_with_it(device, tmp_path: Path) -> None:
    """A start that fails (here: the SuperNode's own port is taken) leaves nothing behind."""
    import socket

    kit, identity = device
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = subprocess.Popen([*FEDPROOF, "client", "--kit", str(kit), "--identity", str(identity), "--server",
                                 f"127.0.0.1:{free_port()}", "--port", str(port)], env=ENV,
                                stdout=open(tmp_path / "client.log", "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            node.wait(timeout=120)
        finally:
            if node.poll() is None:
                node.kill()
    assert _until(lambda: not _processes(str(kit.resolve() / "apps.json")), 15), "a failed start left its executor running"
