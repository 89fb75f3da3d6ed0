"""The FedproofLedger contract and its web3 wrapper, on an in-process eth-tester chain (fast, no node needed).

The same wrapper runs against a real anvil in tests/test_devnet.py; the two backends report reverts differently,
which is why both are exercised.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("eth_tester", reason="eth-tester (web3[tester]) is needed for the in-process chain")

from ledger import errors  # noqa: E402
from ledger.artifact import ARTIFACT_PATH, load_artifact  # noqa: E402
from ledger.contract import LedgerContract, RecordedRound, RoundRecord  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "contracts"


def h(label: str) -> bytes:
    """A distinct, readable 32-byte value per label."""
    return hashlib.sha256(label.encode()).digest()


def record(run: str, r: int, parent: bytes, model: bytes, *, n: int = 10, eps: int = 2_500_000) -> RoundRecord:
    return RoundRecord(
        run_id=h(run),
        round=r,
        parent_model_hash=parent,
        model_hash=model,
        updates_merkle_root=h(f"{run}/root/{r}"),
        num_updates=n,
        epsilon_max_scaled=eps,
        bundle_hash=h(f"{run}/bundle/{r}"),
    )


def record_chain(ledger: LedgerContract, run: str, rounds: int, *, n: int = 10) -> list[RoundRecord]:
    """Record rounds 1..rounds of a run with a correct parent chain (model of round r is h(run/model/r))."""
    out, parent = [], h(f"{run}/init")
    ledger.start_run(h(run), parent)
    for r in range(1, rounds + 1):
        rec = record(run, r, parent, h(f"{run}/model/{r}"), n=n)
        ledger.record_round(rec)
        out.append(rec)
        parent = rec.model_hash
    return out


@pytest.fixture(scope="module")
def deployed() -> LedgerContract:
    return LedgerContract.deploy(LedgerContract.in_memory())


@pytest.fixture
def ledger(deployed: LedgerContract):
    """A freshly deployed contract, as far as a test can tell: the chain is rewound after each (eth-tester)."""
    snapshot = deployed.w3.testing.snapshot()
    yield deployed
    deployed.w3.testing.revert(snapshot)


# --------------------------------------------------------------------------------------------- artifact


def test_artifact_source_hash_matches_source():
    artifact = load_artifact()
    assert artifact.source_sha256 == hashlib.sha256((CONTRACTS / "FedproofLedger.sol").read_bytes()).hexdigest()
    assert artifact.compiler.startswith("0.8.28+")


@pytest.mark.slow
def test_committed_artifact_matches_fresh_compilation(tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so the contract cannot be recompiled")
    if not (CONTRACTS / "node_modules" / "solc" / "package.json").is_file():
        pytest.skip("contracts/node_modules/solc is absent: run `npm ci --prefix contracts`")
    subprocess.run([node, str(CONTRACTS / "compile.mjs"), str(tmp_path)], check=True, capture_output=True)
    fresh_bytes = (tmp_path / "FedproofLedger.json").read_bytes()
    fresh, committed = json.loads(fresh_bytes), json.loads(ARTIFACT_PATH.read_bytes())
    assert fresh["abi"] == committed["abi"]
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh["compiler"] == committed["compiler"]
    # Deterministic output: the whole file is byte-identical (sorted keys, fixed indentation, trailing newline).
    assert fresh_bytes == ARTIFACT_PATH.read_bytes()


def test_damaged_artifact_is_a_typed_error(tmp_path: Path):
    bad = tmp_path / "FedproofLedger.json"
    bad.write_text('{"abi": []}')
    with pytest.raises(errors.LedgerArtifactError, match="keys"):
        load_artifact(bad)
    with pytest.raises(errors.LedgerArtifactError, match="cannot be read"):
        load_artifact(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------- deployment


def test_deploy_and_attach(ledger: LedgerContract):
    assert ledger.deploy_receipt is not None and ledger.deploy_receipt.gas_used > 0
    again = LedgerContract.at(ledger.w3, ledger.address)
    assert again.address == ledger.address and again.chain_id == ledger.w3.eth.chain_id
    assert ledger._contract.functions.owner().call() == ledger.sender


def test_at_refuses_an_address_without_our_code(ledger: LedgerContract):
    w3 = ledger.w3
    with pytest.raises(errors.ContractNotFound, match="no contract code"):
        LedgerContract.at(w3, "0x" + "12" * 20)
    # A contract whose runtime code is a single STOP: code exists, but it is not the ledger.
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": "0x6001600c60003960016000f300", "gas": 100_000})
    other = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
    with pytest.raises(errors.ContractMismatch):
        LedgerContract.at(w3, other)
    with pytest.raises(errors.LedgerValueError):
        LedgerContract.at(w3, "not-an-address")


# --------------------------------------------------------------------------------------------- clients


def test_register_revoke_and_is_active(ledger: LedgerContract):
    alice, bob = h("client/alice"), h("client/bob")
    assert not ledger.is_active_client(alice) and ledger.client_key(alice) is None
    ledger.register_client(alice, h("key/alice"))
    ledger.register_client(bob, h("key/bob"))
    assert ledger.is_active_client(alice) and ledger.is_active_client(bob)
    assert ledger.client_key(alice) == h("key/alice")
    ledger.revoke_client(alice)
    assert not ledger.is_active_client(alice) and ledger.is_active_client(bob)
    assert ledger.client_key(alice) == h("key/alice")  # the key stays, for audits of earlier rounds

    events = ledger.client_events()
    assert [(e.kind, e.client_id) for e in events] == [("registered", alice), ("registered", bob), ("revoked", alice)]
    assert events[0].public_key == h("key/alice") and events[2].public_key is None
    assert [e.block_number for e in events] == sorted(e.block_number for e in events)
    assert [e.kind for e in ledger.client_events(alice)] == ["registered", "revoked"]


def test_register_refuses_second_key_even_after_revocation(ledger: LedgerContract):
    alice = h("client/alice")
    ledger.register_client(alice, h("key/alice"))
    with pytest.raises(errors.ClientAlreadyRegistered) as info:
        ledger.register_client(alice, h("key/other"))
    assert info.value.arguments == {"clientId": alice}
    ledger.revoke_client(alice)
    with pytest.raises(errors.ClientAlreadyRegistered):
        ledger.register_client(alice, h("key/other"))
    assert ledger.client_key(alice) == h("key/alice")


def test_zero_key_and_unknown_client_are_refused(ledger: LedgerContract):
    with pytest.raises(errors.ZeroHashRejected):
        ledger.register_client(h("client/x"), bytes(32))
    with pytest.raises(errors.UnknownClientOnChain, match="never registered"):
        ledger.revoke_client(h("client/nobody"))
    assert ledger.client_events() == []


def test_only_the_owner_writes(ledger: LedgerContract):
    w3 = ledger.w3
    ledger.register_client(h("client/alice"), h("key/alice"))
    record_chain(ledger, "run", 1)
    intruder = LedgerContract.at(w3, ledger.address, sender=w3.eth.accounts[1])
    before = w3.eth.block_number
    with pytest.raises(errors.NotOwner, match=intruder.sender):
        intruder.register_client(h("client/mallory"), h("key/mallory"))
    with pytest.raises(errors.NotOwner):
        intruder.revoke_client(h("client/alice"))
    with pytest.raises(errors.NotOwner):
        intruder.record_round(record("run", 2, h("run/model/1"), h("forged")))
    with pytest.raises(errors.NotOwner):
        intruder.record_deployment(h("run/model/1"), h("artifact"), h("run"), 1, "edge")
    assert w3.eth.block_number == before  # refused before sending: nothing was mined
    assert intruder.is_active_client(h("client/alice"))  # reads are open to anyone
    assert intruder.latest_round(h("run")) == 1


# --------------------------------------------------------------------------------------------- rounds


def test_record_round_enforces_order_and_lineage(ledger: LedgerContract):
    recs = record_chain(ledger, "run", 2)
    run = h("run")
    assert ledger.latest_round(run) == 2

    with pytest.raises(errors.RoundOutOfOrder, match="already recorded") as info:
        ledger.record_round(recs[1])  # duplicate of round 2
    assert info.value.arguments == {"runId": run, "expected": 3, "got": 2}
    with pytest.raises(errors.RoundOutOfOrder, match="out of order"):
        ledger.record_round(record("run", 4, h("run/model/2"), h("run/model/4")))  # skips round 3
    with pytest.raises(errors.RoundOutOfOrder):
        ledger.record_round(record("run", 0, h("run/init"), h("run/model/0")))
    with pytest.raises(errors.ParentMismatch) as info:
        ledger.record_round(record("run", 3, h("run/model/1"), h("run/model/3")))  # parent is round 1's model
    assert info.value.arguments == {"expected": h("run/model/2"), "got": h("run/model/1")}
    with pytest.raises(errors.ZeroHashRejected):
        ledger.record_round(record("run", 3, h("run/model/2"), bytes(32)))

    assert ledger.latest_round(run) == 2
    assert len(ledger.round_events(run_id=run)) == 2  # none of the refused rounds left a trace
    ledger.record_round(record("run", 3, h("run/model/2"), h("run/model/3")))
    assert ledger.latest_round(run) == 3


def test_a_run_starts_once_from_a_registered_model(ledger: LedgerContract):
    with pytest.raises(errors.RunNotStarted):  # no lineage may begin at an arbitrary parent
        ledger.record_round(record("fresh", 1, h("anything"), h("fresh/model/1")))
    ledger.start_run(h("fresh"), h("fresh/init"))
    with pytest.raises(errors.RunAlreadyStarted):
        ledger.start_run(h("fresh"), h("another/init"))
    with pytest.raises(errors.ParentMismatch):
        ledger.record_round(record("fresh", 1, h("anything"), h("fresh/model/1")))
    ledger.record_round(record("fresh", 1, h("fresh/init"), h("fresh/model/1")))
    assert ledger.initial_model(h("fresh")) == h("fresh/init") and ledger.initial_model(h("never")) is None
    assert ledger.run_starts(run_id=h("fresh"))[0][:2] == (h("fresh"), h("fresh/init"))


def test_runs_are_independent(ledger: LedgerContract):
    record_chain(ledger, "a", 2)
    record_chain(ledger, "b", 1)  # run b starts at round 1 although run a is at round 2
    assert (ledger.latest_round(h("a")), ledger.latest_round(h("b")), ledger.latest_round(h("c"))) == (2, 1, 0)


def test_round_events_by_run_and_by_model(ledger: LedgerContract):
    recs_a = record_chain(ledger, "a", 3)
    recs_b = record_chain(ledger, "b", 2)

    got_a = ledger.round_events(run_id=h("a"))
    assert [e.as_record() for e in got_a] == recs_a
    assert all(isinstance(e, RecordedRound) for e in got_a)
    assert [e.as_record() for e in ledger.round_events(run_id=h("b"))] == recs_b
    assert len(ledger.round_events()) == 5
    assert ledger.round_events(run_id=h("nobody")) == []

    (one,) = ledger.round_events(model_hash=h("a/model/2"), with_gas=True)
    assert one.as_record() == recs_a[1]
    receipt = ledger.w3.eth.get_transaction_receipt(one.tx_hash)
    assert receipt["blockNumber"] == one.block_number and receipt["gasUsed"] == one.gas_used
    assert "0x" + bytes(receipt["blockHash"]).hex() == one.block_hash
    assert ledger.round_events(run_id=h("b"), model_hash=h("a/model/2")) == []
    assert [e.round for e in ledger.round_events(run_id=h("a"), from_block=one.block_number)] == [2, 3]


def test_record_round_gas_does_not_depend_on_participants(ledger: LedgerContract):
    """Only the Merkle root of the updates is stored, so 10 or 100 participants cost the same."""

    def gas_for(run: str, n: int) -> tuple[int, int]:
        ledger.start_run(h(run), h(f"{run}/init"))
        first = ledger.record_round(record(run, 1, h(f"{run}/init"), h(f"{run}/m1"), n=n)).gas_used
        steady = ledger.record_round(record(run, 2, h(f"{run}/m1"), h(f"{run}/m2"), n=n)).gas_used
        return first, steady

    first_10, steady_10 = gas_for("ten", 10)
    first_100, steady_100 = gas_for("hundred", 100)
    assert abs(first_10 - first_100) < 300  # calldata bytes differ slightly with the values, nothing else
    assert abs(steady_10 - steady_100) < 300
    assert steady_10 < first_10 < 200_000
    events = ledger.round_events(run_id=h("hundred"), with_gas=True)
    assert [e.num_updates for e in events] == [100, 100] and events[1].gas_used == steady_100


def test_a_revert_when_mined_is_still_reported(ledger: LedgerContract, monkeypatch: pytest.MonkeyPatch):
    """If the state changes between the check and the mining, the status-0 receipt is caught and decoded."""
    recs = record_chain(ledger, "run", 1)
    real = LedgerContract._preflight

    def skip_first_check(self, fn, tx, block, suffix=""):  # noqa: ANN001
        if block != "latest":
            real(self, fn, tx, block, suffix)

    monkeypatch.setattr(LedgerContract, "_preflight", skip_first_check)
    before = ledger.w3.eth.block_number
    with pytest.raises(errors.RoundOutOfOrder, match="reverted when mined"):
        ledger.record_round(recs[0])
    assert ledger.w3.eth.block_number == before + 1  # it was mined, with status 0


# --------------------------------------------------------------------------------------------- key statements


def test_record_key_needs_a_started_run_and_keeps_every_statement_as_an_event(ledger: LedgerContract):
    from ledger.key_statement import KeyStatement, SignedKeyStatement

    statement = KeyStatement(h("joint key"), 3, ("a", "b", "c", "d", "e"), 1000, 1)
    signed = SignedKeyStatement(statement, {c: bytes([i]) * 64 for i, c in enumerate(statement.holders)})
    with pytest.raises(errors.RunNotStarted):
        ledger.record_key(h("run"), signed)
    ledger.start_run(h("run"), h("run/init"))
    intruder = LedgerContract.at(ledger.w3, ledger.address, sender=ledger.w3.eth.accounts[1])
    with pytest.raises(errors.NotOwner):
        intruder.record_key(h("run"), signed)
    raw = statement.to_bytes()
    for key_id, sigs, error in ((bytes(32), bytes(64), errors.ZeroHashRejected),
                                (h("k"), b"", errors.BadKeyStatementOnChain),
                                (h("k"), bytes(63), errors.BadKeyStatementOnChain)):
        with pytest.raises(error):
            ledger._transact("recordKey", [h("run"), key_id, raw, sigs], 200_000)
    first = ledger.record_key(h("run"), signed)
    assert 30_000 < first.gas_used < 60_000  # five holders: calldata and the event's bytes
    ledger._transact("recordKey", [h("run"), h("not its digest"), b"junk", bytes(64)], 200_000)  # the contract can't tell
    got = ledger.key_events(h("run"))
    assert [(e.key_id, e.signed, e.error == "") for e in got] == [(statement.sha256, signed, True),
                                                                   (h("not its digest"), None, False)]
    assert got[0].block_number == first.block_number and got[0].tx_hash == first.tx_hash
    assert (got[1].statement, got[1].signatures) == (b"junk", bytes(64))
    assert ledger.key_events(h("other")) == [] and ledger.key_events(key_id=statement.sha256) == got[:1]


# --------------------------------------------------------------------------------------------- deployments


def test_record_deployment_requires_a_recorded_model(ledger: LedgerContract):
    record_chain(ledger, "run", 2)
    run = h("run")
    with pytest.raises(errors.UnknownModelOnChain, match=h("never-trained").hex()):
        ledger.record_deployment(h("never-trained"), h("artifact"), run, 2, "edge")
    with pytest.raises(errors.UnknownModelOnChain):
        ledger.record_deployment(h("run/model/1"), h("artifact"), run, 2, "edge")  # model of another round
    with pytest.raises(errors.UnknownModelOnChain):
        ledger.record_deployment(bytes(32), h("artifact"), h("other-run"), 7, "edge")  # zero = absent

    receipt = ledger.record_deployment(h("run/model/2"), h("artifact/int8"), run, 2, "edge:onnx-int8 ✓")
    (event,) = ledger.deployment_events(model_hash=h("run/model/2"))
    expected = (h("artifact/int8"), run, 2, "edge:onnx-int8 ✓")
    assert (event.artifact_hash, event.run_id, event.round, event.target) == expected
    assert event.tx_hash == receipt.tx_hash and event.block_number == receipt.block_number
    assert ledger.deployment_events(artifact_hash=h("artifact/int8")) == [event]
    assert ledger.deployment_events(artifact_hash=h("artifact/other")) == []


def test_wrapper_checks_values_before_sending(ledger: LedgerContract):
    before = ledger.w3.eth.block_number
    with pytest.raises(errors.LedgerValueError, match="32 bytes"):
        ledger.register_client(b"short", h("key"))
    with pytest.raises(errors.LedgerValueError):
        record("run", -1, h("p"), h("m"))
    with pytest.raises(errors.LedgerValueError):
        record("run", 1, h("p"), h("m"), n=2**32)
    with pytest.raises(errors.LedgerValueError, match="at most"):
        ledger.record_deployment(h("m"), h("a"), h("run"), 1, "x" * 5000)
    assert ledger.w3.eth.block_number == before


def test_connect_to_nothing_is_ledger_unavailable():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(errors.LedgerUnavailable, match="fedproof devnet start") as info:
        LedgerContract.connect(url, timeout=1.0)
    assert url in str(info.value) and "--ledger-url" in str(info.value)
