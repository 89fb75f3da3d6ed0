"""A run's t and key holders come from its key statement on chain, signed by every holder, never from the server's
bundles: what ``verify_model`` accepts and refuses (tests/key_scenarios.py), the ``KeyRecorded`` events and what the
lineage writes, on an in-process chain (eth-tester) with five registered clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedproof.core.config import RunConfig
from fl_server.lineage import Lineage
from fl_server.startup import register_clients
from key_scenarios import CLIENTS, REFUSED, cosigned_round, honest, model, of, rekeyed_honestly
from ledger.audit import AuditFailure, keys_in_force, verify_model
from ledger.bundle import RoundBundle
from ledger.contract import KEY_BASE_GAS, LedgerContract
from ledger.errors import LedgerValueError, RunNotStarted
from ledger.key_statement import SignedKeyStatement
from ledger.outbox import KeyRecord
from ledger.signing import SigningKey, client_id_hash, run_id_hash
from ledger.verification import AllowList
from rounds import key_statement

KEYS = {c: SigningKey.generate() for c in CLIENTS}


@pytest.fixture(scope="module")
def deployed() -> LedgerContract:
    contract = LedgerContract.deploy(LedgerContract.in_memory())
    register_clients(contract, AllowList({c: k.public_key for c, k in KEYS.items()}))
    return contract


@pytest.fixture()
def chain(deployed: LedgerContract):
    snapshot = deployed.w3.testing.snapshot()
    yield deployed
    deployed.w3.testing.revert(snapshot)


def start(tmp_path: Path, chain: LedgerContract, run_id: str = "k") -> Lineage:
    config = RunConfig(run_id=run_id, chain_id=chain.chain_id, ledger_contract=chain.address,
                       chain_genesis="0x" + chain.genesis.hex())
    return Lineage(tmp_path / run_id, config, chain, model(0.0))


def verify(lin: Lineage, **kw):
    return verify_model(lin.contract, lin.parent.hex(), [lin.bundles], **kw)


def test_an_honest_3_of_5_run_verifies_under_its_key_on_chain(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    honest(lin, KEYS)
    report = verify(lin)
    assert [e.round for e, _ in report.rounds] == [2, 1]
    key = report.keys[(run_id_hash("k"), 1)]
    assert key.signed is not None and (key.signed.statement.threshold, key.signed.statement.holders) == (3, CLIENTS)
    assert all(bundle.key_sha256 == key.key_id for _, bundle in report.rounds)
    saved = json.loads((tmp_path / "k" / "keys" / f"{key.key_id.hex()}.json").read_text())
    assert (saved["threshold"], saved["holders"], saved["key_sha256"]) == (3, list(CLIENTS), key.key_id.hex())
    assert SignedKeyStatement.from_bytes(bytes.fromhex(saved["statement"]),
                                         bytes.fromhex(saved["signatures"])) == key.signed


def test_a_run_may_rekey_for_later_rounds(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    rekeyed_honestly(lin, KEYS)
    report = verify(lin)
    first, second = report.keys[(run_id_hash("k"), 1)], report.keys[(run_id_hash("k"), 2)]
    assert (first.signed.statement.threshold, second.signed.statement.threshold) == (3, 2)


@pytest.mark.parametrize("scenario", sorted(REFUSED))
def test_co_signers_the_key_on_chain_does_not_vouch_for_fail(tmp_path: Path, chain, scenario: str) -> None:
    lin = start(tmp_path, chain)
    expected = REFUSED[scenario](lin, KEYS)
    with pytest.raises(AuditFailure, match=expected):
        verify(lin)


def test_the_bundles_claim_of_t_is_ignored(tmp_path: Path, chain) -> None:
    """The bundle's threshold/holders fields may say anything: an honest run whose bundle says 1-of-1 verifies,
    the review's "2-of-2" with two co-signers does not (tests/key_scenarios.py: bundle_claims_2_of_2)."""
    lin = start(tmp_path, chain)
    key = key_statement(lin.config, of(KEYS, CLIENTS), 3)
    lin.record_key(key)
    cosigned_round(lin, KEYS, 1, key, "abc", claim=(1, 1))
    assert RoundBundle.from_bytes((lin.bundles / "round-1.json").read_bytes()).threshold == 1
    assert verify(lin).rounds
    with pytest.raises(AuditFailure, match="at least 4 are required"):  # the auditor's own floor still applies
        verify(lin, min_cosigners=4)


def test_trusting_the_server_does_not_excuse_a_threshold_run_without_co_signatures(tmp_path: Path, chain) -> None:
    from key_scenarios import leaves
    from rounds import round_result

    lin = start(tmp_path, chain)
    lin.record_key(key_statement(lin.config, of(KEYS, CLIENTS), 3))
    lin.record(round_result(1, model(0), model(1), leaves(lin, KEYS, 1)))  # no endorsement: the server's word
    with pytest.raises(AuditFailure, match="round 1 .*no client co-signed this model, yet the run has a key statement"):
        verify(lin, trust_server=True)


def test_a_holder_revoked_before_the_key_was_recorded_voids_it(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    chain.revoke_client(client_id_hash("e"))
    key = key_statement(lin.config, of(KEYS, CLIENTS), 3)
    lin.record_key(key)
    cosigned_round(lin, KEYS, 1, key, "abc")
    with pytest.raises(AuditFailure, match="key holder 'e' is not a registered client"):
        verify(lin)


def test_key_events_parse_or_flag_and_record_key_is_checked(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    key = key_statement(lin.config, of(KEYS, CLIENTS), 3)
    receipt = chain.record_key(run_id_hash("k"), key)
    assert receipt.gas_used < KEY_BASE_GAS  # measured ~41 k for five holders
    (event,) = chain.key_events(run_id_hash("k"))
    assert (event.key_id, event.signed, event.error, event.block_number) == (key.statement.sha256, key, "",
                                                                             receipt.block_number)
    assert chain.key_events(run_id_hash("other")) == [] and len(chain.key_events(key_id=key.statement.sha256)) == 1
    with pytest.raises(RunNotStarted):
        chain.record_key(run_id_hash("never-started"), key)
    with pytest.raises(LedgerValueError, match="one 64-byte signature per holder"):
        chain.record_key(run_id_hash("k"), SignedKeyStatement(key.statement, {"a": key.signatures["a"]}))
    runs = keys_in_force(chain, "k")
    assert runs.in_force(1, chain.w3.eth.block_number) == event and runs.refused == {}
    print(f"recordKey, 5 holders: {receipt.gas_used} gas")


def test_a_key_waits_in_the_outbox_and_goes_before_the_rounds(tmp_path: Path, chain) -> None:
    class Down:
        def __init__(self, contract):
            self.contract = contract

        def __getattr__(self, name):
            return getattr(self.contract, name)

        def record_key(self, *args):
            from ledger.errors import LedgerUnavailable

            raise LedgerUnavailable("node down")

        record_round = record_key

    down = Down(chain)
    config = RunConfig(run_id="k", chain_id=chain.chain_id, ledger_contract=chain.address,
                       chain_genesis="0x" + chain.genesis.hex())
    lin = Lineage(tmp_path / "k", config, down, model(0.0))  # started (startRun) while the node answered
    key = key_statement(config, of(KEYS, CLIENTS), 3)
    lin.record_key(key)
    cosigned_round(lin, KEYS, 1, key, "abc")
    assert [type(r).__name__ for r in lin.outbox.pending()] == ["KeyRecord", "RoundRecord"]
    assert chain.key_events(run_id_hash("k")) == []
    assert lin.outbox.flush(chain) == 0
    assert len(chain.key_events(run_id_hash("k"))) == 1
    lin.outbox.push(KeyRecord(run_id_hash("k"), key))  # sent, then a crash before it left the outbox
    assert lin.outbox.flush(chain) == 0 and len(chain.key_events(run_id_hash("k"))) == 1  # not sent twice
    assert lin.record_key(key) == tmp_path / "k" / "keys" / f"{key.statement.sha256.hex()}.json"  # again: no-op
    assert lin.outbox.pending() == []
    verify_model(chain, lin.parent.hex(), [lin.bundles])


def test_the_audit_cli_shows_the_key_from_the_chain(tmp_path: Path, chain, monkeypatch, capsys) -> None:
    from typer.testing import CliRunner

    from fedproof.cli import audit as cli_audit

    lin = start(tmp_path, chain)
    honest(lin, KEYS)
    lin.final_model(tmp_path / "model.safetensors")
    monkeypatch.setattr(cli_audit, "open_contract", lambda *a, **kw: chain)
    args = ["verify", str(tmp_path / "model.safetensors"), "--bundles", str(lin.bundles)]
    done = CliRunner().invoke(cli_audit.audit_app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    (key,) = json.loads(done.output)["keys"]
    assert (key["run"], key["threshold"], key["holders"], key["rounds"]) == ("k", 3, list(CLIENTS), [1, 2])
    done = CliRunner().invoke(cli_audit.audit_app, args)
    assert "3 of 5 holders (a, b, c, d, e)" in done.output, done.output
    cli_audit.print_lineage(chain, lin.parent, [lin.bundles], as_json=True)
    rows = json.loads(capsys.readouterr().out)
    assert [(r["round"], r["key"]["threshold"], len(r["key"]["holders"])) for r in rows] == [(2, 3, 5), (1, 3, 5)]
