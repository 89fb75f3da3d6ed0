"""Detached processes fedproof starts and stops by pidfile (the devnet's anvil, the SuperLink): one helper.

A process starts in a session of its own (it outlives the CLI that started it, and a Ctrl-C there), its output
appended to a log and its pid written to a pidfile. It counts as running only while that pid is alive, is not a
zombie, and its command line still holds ``marker`` (after a reboot the pid may belong to another program).
Stopping sends SIGTERM to its process group (children included: Flower's helpers), then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fedproof.base.files import write_atomically

# Processes started by this Python process, by pid. Process objects come and go (one per CLI call) while the
# process keeps running detached; holding the Popen here lets any of them reap it, and keeps Popen.__del__ from
# warning that a process we meant to leave running is still running.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Process:
    pid_file: Path
    log_file: Path
    marker: str
    """An argument the process's command line must hold for a pid in the pidfile to count as ours."""

    def spawn(self, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` detached, its output appended to the log; write the pidfile. OSError if it cannot run."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- fedproof: starting {' '.join(command)}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=env)
        _STARTED[proc.pid] = proc
        write_atomically(self.pid_file, f"{proc.pid}\n".encode())
        return proc

    def live_pid(self) -> int | None:
        """The pid in the pidfile if that process is alive and ours, else None (a stale pidfile is removed)."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit() or int(text) <= 1 or not alive(int(text)) or not self._is_ours(int(text)):
            self.pid_file.unlink(missing_ok=True)  # it died (kill -9, reboot), or the pid was reused
            return None
        return int(text)

    def stop(self, timeout: float = 10) -> None:
        pid = self.live_pid()
        if pid is not None:
            stop_pid(pid, timeout)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _is_ours(self, pid: int) -> bool:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return sys.platform != "linux"  # no /proc: trust the pidfile
        return os.fsencode(self.marker) in args


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (reaping it first if it is our exited child: a zombie is not alive)."""
    proc = _STARTED.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _STARTED[pid]
        return False
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except OSError:  # not our child
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_pid(pid: int, timeout: float = 10) -> None:
    """SIGTERM the process group of ``pid`` (its children too), then SIGKILL if it is still alive after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:  # not a group leader we may signal: the process alone
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.02)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
