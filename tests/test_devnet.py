"""The local devnet: a real anvil on a random loopback port with a temporary data directory.

Every anvil started here is stopped by a finalizer, whatever the test's outcome.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ledger import errors
from ledger.contract import LedgerContract, RoundRecord
from ledger.devnet import Devnet, ensure_contract, find_anvil, remember_contract, remembered_contract

pytestmark = pytest.mark.slow  # real processes: see the markers in pyproject.toml

try:
    ANVIL: str | None = find_anvil()
except errors.AnvilNotFound:
    ANVIL = None
needs_anvil = pytest.mark.skipif(ANVIL is None, reason="anvil not installed: run `npm ci --prefix contracts`")


def h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record_rounds(ledger: LedgerContract, run: bytes, first: int, last: int) -> None:
    for r in range(first, last + 1):
        parent = h(f"init/{run.hex()}") if r == 1 else h(f"model/{r - 1}")
        if r == 1:
            ledger.start_run(run, parent)
        ledger.record_round(
            RoundRecord(run, r, parent, h(f"model/{r}"), h(f"root/{r}"), 10 + r, 1_000_000 * r, h(f"bundle/{r}"))
        )


@pytest.fixture
def devnet(tmp_path: Path) -> Iterator[Devnet]:
    net = Devnet(tmp_path / "devnet", port=free_port(), state_interval=1, anvil=ANVIL)
    try:
        yield net
    finally:
        net.stop(timeout=5)
        assert not net.status().running


@needs_anvil
def test_chain_survives_stop_and_start(devnet: Devnet):
    status = devnet.start()
    assert status.running and status.pid and status.block_number == 0
    w3 = LedgerContract.connect(devnet.url)
    assert w3.eth.chain_id == 31337
    ledger = ensure_contract(w3, devnet.data_dir)
    run = h("run")
    record_rounds(ledger, run, 1, 3)
    before = ledger.round_events(run_id=run)

    devnet.stop()
    assert not devnet.status().running and not devnet.pid_file.exists()
    assert devnet.state_file.is_file()

    again = devnet.start()
    assert again.running and again.pid != status.pid and again.block_number == status.block_number + 5  # deploy, startRun, 3 rounds
    w3 = LedgerContract.connect(devnet.url)
    ledger = remembered_contract(devnet.data_dir, w3)
    assert ledger is not None
    assert ensure_contract(w3, devnet.data_dir).address == ledger.address  # no second deployment
    assert ledger.latest_round(run) == 3
    after = ledger.round_events(run_id=run)
    assert after == before  # same records, same tx and block hashes: the history itself was kept
    record_rounds(ledger, run, 4, 4)
    assert ledger.latest_round(run) == 4
    # anvil reports reverts as ContractCustomError (eth-tester differently): the same typed errors come out.
    with pytest.raises(errors.RoundOutOfOrder, match="already recorded"):
        record_rounds(ledger, run, 4, 4)
    with pytest.raises(errors.ParentMismatch):
        ledger.record_round(RoundRecord(run, 5, h("model/3"), h("model/5"), h("r"), 1, 1, h("b")))


@needs_anvil
def test_kill_9_loses_at_most_the_state_interval(devnet: Devnet):
    devnet.start()
    ledger = ensure_contract(LedgerContract.connect(devnet.url), devnet.data_dir)
    run = h("run")
    record_rounds(ledger, run, 1, 3)
    time.sleep(devnet.state_interval + 1)  # one periodic dump has happened since the last round
    pid = devnet.status().pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while devnet.status().pid is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not devnet.status().running

    devnet.start()
    ledger = remembered_contract(devnet.data_dir, LedgerContract.connect(devnet.url))
    assert ledger is not None
    assert ledger.latest_round(run) == 3
    assert [e.round for e in ledger.round_events(run_id=run)] == [1, 2, 3]


@needs_anvil
def test_start_is_idempotent_and_status_reports(devnet: Devnet):
    down = devnet.status()
    assert (down.running, down.pid, down.block_number) == (False, None, None)
    assert down.url == f"http://127.0.0.1:{devnet.port}" and down.data_dir == devnet.data_dir
    first = devnet.start()
    second = devnet.start()
    assert second.pid == first.pid and second.running
    assert int(devnet.pid_file.read_text()) == first.pid
    # A second Devnet object on the same directory (another CLI call) sees the same process.
    assert Devnet(devnet.data_dir, port=devnet.port).status().pid == first.pid
    devnet.stop()
    assert devnet.status().running is False


@needs_anvil
def test_a_devnet_that_is_down_is_ledger_unavailable(devnet: Devnet):
    with pytest.raises(errors.LedgerUnavailable, match="fedproof devnet start"):
        LedgerContract.connect(devnet.url)
    devnet.start()
    ledger = ensure_contract(LedgerContract.connect(devnet.url), devnet.data_dir)
    devnet.stop()
    with pytest.raises(errors.LedgerUnavailable, match=devnet.url):  # gone in the middle of a run
        ledger.latest_round(h("run"))
    with pytest.raises(errors.LedgerUnavailable):
        record_rounds(ledger, h("run"), 1, 1)


@needs_anvil
def test_port_held_by_something_else_is_a_typed_error(devnet: Devnet):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", devnet.port))
        squatter.listen()
        with pytest.raises(errors.DevnetPortInUse, match=str(devnet.port)):
            devnet.start()
    assert not devnet.pid_file.exists()


def test_damaged_state_file_is_reported_before_starting(tmp_path: Path):
    net = Devnet(tmp_path, port=free_port(), anvil="/nonexistent/anvil")
    net.state_file.write_text('{"block": {"number": ')  # cut off mid-write
    with pytest.raises(errors.DevnetStateCorrupt, match="chain.json"):
        net.start()


def test_find_anvil_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("FEDPROOF_ANVIL", str(tmp_path / "no-such-anvil"))
    with pytest.raises(errors.AnvilNotFound, match="FEDPROOF_ANVIL"):
        find_anvil()


def test_remembered_contract(tmp_path: Path):
    w3 = LedgerContract.in_memory()
    assert remembered_contract(tmp_path, w3) is None  # no deployment.json
    ledger = ensure_contract(w3, tmp_path)
    assert remembered_contract(tmp_path, w3).address == ledger.address
    assert ensure_contract(w3, tmp_path).address == ledger.address

    path = tmp_path / "deployment.json"
    saved = json.loads(path.read_text())
    assert saved == {"address": ledger.address, "artifact_sha256": ledger.artifact.sha256, "chain_id": ledger.chain_id}
    path.write_text(json.dumps({**saved, "chain_id": saved["chain_id"] + 1}))
    assert remembered_contract(tmp_path, w3) is None  # another chain
    path.write_text(json.dumps({**saved, "address": "0x" + "ab" * 20}))
    assert remembered_contract(tmp_path, w3) is None  # no code there (e.g. the chain was reset)
    path.write_text("not json")
    with pytest.raises(errors.DevnetError):
        remembered_contract(tmp_path, w3)
    remember_contract(tmp_path, ledger)
    assert remembered_contract(tmp_path, w3).address == ledger.address


@needs_anvil
def test_cli_start_status_stop(devnet: Devnet):
    from fedproof.cli.devnet import devnet_app

    runner = CliRunner()
    opts = ["--data-dir", str(devnet.data_dir), "--port", str(devnet.port)]
    result = runner.invoke(devnet_app, ["status", *opts])
    assert result.exit_code == 0 and "not running" in result.output
    result = runner.invoke(devnet_app, ["start", *opts])
    assert result.exit_code == 0, result.output
    address = json.loads((devnet.data_dir / "deployment.json").read_text())["address"]
    assert address in result.output
    result = runner.invoke(devnet_app, ["status", *opts])
    assert result.exit_code == 0 and "running" in result.output and address in result.output
    elsewhere = ["--data-dir", str(devnet.data_dir / "other"), "--port", str(devnet.port)]
    busy = runner.invoke(devnet_app, ["start", *elsewhere])
    assert busy.exit_code == 2 and busy.output.startswith("error:")
    result = runner.invoke(devnet_app, ["stop", *opts])
    assert result.exit_code == 0 and "stopped" in result.output
    assert not devnet.status().running


@needs_anvil
def test_a_directory_without_a_port_takes_a_free_one_keeps_it_and_reports_it(tmp_path: Path) -> None:
    net = Devnet(tmp_path / "own", anvil=ANVIL)
    assert net.port == 0 and net.status().url == ""  # never ran, no port given: none yet
    try:
        first = net.start()
        assert first.port not in (0, 8545) and first.chain_id == 31337 and first.port == net.port
        assert (tmp_path / "own" / "anvil.port").read_text().strip() == str(first.port)
        again = Devnet(tmp_path / "own", anvil=ANVIL)  # another CLI call finds the same devnet
        assert again.port == first.port and again.status().pid == first.pid
        net.stop()
        assert Devnet(tmp_path / "own", anvil=ANVIL).start().port == first.port  # reused on restart
    finally:
        net.stop(timeout=5)


@needs_anvil
def test_devnet_status_lists_directory_port_pid_and_chain(tmp_path: Path) -> None:
    port = free_port()
    runner = CliRunner()
    from fedproof.cli.main import app

    try:
        assert runner.invoke(app, ["devnet", "start", "--data-dir", str(tmp_path), "--port", str(port),
                                   "--no-deploy"]).exit_code == 0
        shown = runner.invoke(app, ["devnet", "status", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        pid = Devnet(tmp_path).status().pid
        for label, value in (("data dir", str(tmp_path)), ("port", str(port)), ("pid", str(pid)),
                             ("chain id", "31337")):
            assert any(line.split()[:len(label.split())] == label.split() and value in line
                       for line in shown.output.splitlines()), (label, shown.output)
    finally:
        runner.invoke(app, ["devnet", "stop", "--data-dir", str(tmp_path)])
