"""An operator's and a device's first mistakes: each gets a clear error naming the cause and the flag that fixes it,
and loses nothing (no password kept that does not open the keystore, no device started on data it cannot read)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedproof.cli.server import operator_account
from fedproof.launch.nodes import ServerKit
from fedproof.base.errors import FedproofError
from fedproof.launch.provision import provision
from ledger.operator import OperatorKeys

ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200"}


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory):
    kits = provision(tmp_path_factory.mktemp("kits") / "kits", 1, "127.0.0.1", 9092, apps=["ab" * 32])
    OperatorKeys.create(kits.server / "operator", b"the right password")
    return kits


@pytest.mark.slow  # a few seconds: `make test` and CI run it
def test_a_wrong_operator_password_is_refused_and_never_kept(kits, tmp_path: Path) -> None:
    server = ServerKit.load(kits.server)
    kept = server.state / "operator-password"
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.write_text("not the password\n")
    right.write_text("the right password\n")
    with pytest.raises(FedproofError, match=f"--password-file {wrong} does not open the operator keystore"):
        operator_account(server, wrong)
    assert not kept.exists()  # the next start prompts again instead of failing the same way
    account = operator_account(server, right)
    assert kept.read_text() == "the right password\n" and (kept.stat().st_mode & 0o777) == 0o600
    assert operator_account(server, None).address == account.address  # the kept one, no prompt
    kept.write_text("changed since\n")
    with pytest.raises(FedproofError, match="the password kept in .* --password-file"):
        operator_account(server, None)


@pytest.mark.slow  # a process of the CLI
def test_a_device_with_a_wrong_data_dir_is_told_before_it_starts(kits, tmp_path: Path) -> None:
    kit = kits.clients["0"]
    done = subprocess.run([sys.executable, "-m", "fedproof.cli", "client", "--kit", str(kit), "--data-dir",
                           str(tmp_path / "nowhere"), "--insecure"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--data-dir {tmp_path / 'nowhere'}: Fashion-MNIST not found" in " ".join(done.stdout.split())
