"""The same apps run under Flower's own CLI: `flwr run .` on a local simulation SuperLink."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.core.rundir import RunDirectory

pytestmark = pytest.mark.slow  # real processes: see the markers in pyproject.toml

ROOT = Path(__file__).resolve().parents[1]


def _kill_local_superlink(flwr_home: Path) -> None:
    """`flwr run` leaves the local SuperLink it started running; stop the one under our FLWR_HOME."""
    found = subprocess.run(["pgrep", "-f", str(flwr_home)], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_flwr_run_local_simulation(synthetic_dir: Path, tmp_path: Path) -> None:
    flwr_home, runs = tmp_path / "flwr-home", tmp_path / "runs"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    overrides = (
        f"clients=2 rounds=1 local-epochs=1 batch-size=16 dp=false ledger=false min-contributors=2 "
        f"data-dir='{synthetic_dir}' "
        f"run-dir='{runs}' run-id='flwr'"
    )
    try:
        proc = subprocess.run(
            [os.path.join(bin_dir, "flwr"), "run", str(ROOT), "--stream",
             "--federation-config", "num-supernodes=2", "-c", overrides],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
        )
    finally:
        _kill_local_superlink(flwr_home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = RunDirectory(runs / "flwr").metrics()
    assert [r.round for r in rows] == [1] and rows[0].train_clients == 2
    assert (runs / "flwr" / "model.safetensors").is_file()
    assert not (ROOT / "pyproject.toml").read_text().count("CONFIGURATION MIGRATION NOTICE")
