"""Lineage records and audits on an in-process chain (eth-tester): what verify accepts and what it refuses, with
the server as the forger (a made-up model, a round of no updates, a history rewritten after evm_revert, a lineage
spliced into another run, leaves from another devnet)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedproof.core.config import RunConfig
from fl_server.lineage import Lineage
from fl_server.startup import register_clients
from rounds import endorse, key_statement, round_result
from ledger.audit import AuditFailure, ModelNotRecorded, lineage, verify_model
from ledger.bundle import RoundBundle, SignedUpdate
from ledger.contract import LedgerContract, RoundRecord
from ledger.errors import LedgerUnavailable
from fedproof.core.weights import hash_model
from ledger.signing import SignedFields, SigningKey, client_id_hash, payload_digest, run_id_hash, scale_epsilon
from ledger.verification import AllowList

KEYS = {c: SigningKey.generate() for c in ("a", "b", "c")}


@pytest.fixture(scope="module")
def deployed() -> LedgerContract:
    contract = LedgerContract.deploy(LedgerContract.in_memory())
    register_clients(contract, AllowList({c: k.public_key for c, k in KEYS.items() if c != "c"}))
    return contract


@pytest.fixture()
def chain(deployed: LedgerContract):
    """The deployed contract, rewound after each test (an eth-tester snapshot: cheaper than a new chain)."""
    snapshot = deployed.w3.testing.snapshot()
    yield deployed
    deployed.w3.testing.revert(snapshot)


def model(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((3, 3), value, np.float32))})


def config_for(contract: LedgerContract, run_id: str, genesis: bytes | None = None) -> RunConfig:
    return RunConfig(run_id=run_id, chain_id=contract.chain_id, ledger_contract=contract.address,
                     chain_genesis="0x" + (genesis or contract.genesis).hex())


def admitted(contract: LedgerContract, run_id: str, rnd: int, client: str, parent: ArrayRecord | None = None,
             genesis: bytes | None = None) -> SignedUpdate:
    """``client``'s signed leaf for round ``rnd``, trained from ``parent`` (default: model(rnd - 1))."""
    parent = model(rnd - 1) if parent is None else parent
    fields = SignedFields(chain_id=contract.chain_id, contract=bytes.fromhex(contract.address[2:]), run_id=run_id,
                          round=rnd, client_id=client, payload_sha256=payload_digest([f"{client}{rnd}".encode()]),
                          num_examples=100, epsilon_scaled=scale_epsilon(0.5 * rnd),
                          genesis=genesis or contract.genesis, parent_model_hash=hash_model(parent, run_id))
    return SignedUpdate(fields, KEYS[client].public_key, KEYS[client].sign(fields))


def key_of(config: RunConfig):
    """The run's key: 2 of a and b (the registered clients), as both signed it."""
    return key_statement(config, {c: KEYS[c] for c in ("a", "b")}, 2)


def start(tmp_path: Path, contract: LedgerContract, run_id: str = "r1", config: RunConfig | None = None,
          **kw) -> Lineage:
    """A new run's lineage (its initial model registered) and its key statement on chain."""
    lin = Lineage(tmp_path / run_id, config or config_for(contract, run_id), contract, model(0.0), **kw)
    lin.record_key(key_of(lin.config))
    return lin


def record_round(lin: Lineage, rnd: int, parent: ArrayRecord, new: ArrayRecord | None, clients=("a", "b"),
                 signers=("a", "b"), genesis: bytes | None = None) -> None:
    """Round ``rnd``: ``clients``' leaves, the model co-signed under the run's key by ``signers``, as honest devices
    do."""
    leaves = [admitted(lin.contract, lin.config.run_id, rnd, c, parent, genesis) for c in clients]
    endorsement = endorse(lin.config, rnd, parent, new, leaves, {c: KEYS[c] for c in signers},
                          key_of(lin.config)) if new else None
    lin.record(round_result(rnd, parent, new, leaves, endorsement=endorsement))


def run(tmp_path: Path, contract: LedgerContract, rounds: int = 3, run_id: str = "r1",
        clients: tuple[str, ...] = ("a", "b")) -> Lineage:
    lin = start(tmp_path, contract, run_id)
    for rnd in range(1, rounds + 1):
        record_round(lin, rnd, model(rnd - 1), model(rnd), clients)
    lin.final_model(tmp_path / run_id / "model.safetensors")
    return lin


def verify(chain: LedgerContract, tmp_path: Path, source, run_id: str = "r1"):
    return verify_model(chain, source, [tmp_path / run_id / "ledger"])


def test_lineage_walks_back_to_the_initial_model_and_verify_passes(tmp_path: Path, chain) -> None:
    lin = run(tmp_path, chain)
    lin.record(round_result(4, model(3), None, failure="too few key holders decrypted"))  # a void round: recorded, but it produced nothing
    steps = lineage(chain, lin.parent)
    assert [s.round for s in steps] == [3, 2, 1]
    assert all(a.parent_model_hash == b.model_hash for a, b in zip(steps, steps[1:]))
    assert chain.latest_round(run_id_hash("r1")) == 4
    report = verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])
    assert len(report.rounds) == 3 and report.updates == 6
    assert steps[0].epsilon_max_scaled == scale_epsilon(1.5)


def test_a_model_never_recorded_fails(tmp_path: Path, chain) -> None:
    run(tmp_path, chain)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not a recorded model")
    with pytest.raises(ModelNotRecorded):
        verify_model(chain, other, [tmp_path / "r1" / "ledger"])


def forge(tmp_path: Path, chain: LedgerContract, honest: RoundBundle, **changes) -> bytes:
    """The server's move: write a bundle of its own beside the honest ones and record it; returns its model hash."""
    forged = dataclasses.replace(honest, **changes)
    forged = dataclasses.replace(forged, updates=tuple(  # the leaves as an auditor reads them: the bundle's own fields
        dataclasses.replace(u, fields=dataclasses.replace(u.fields, run_id=forged.run_id, round=forged.round,
                                                          parent_model_hash=forged.parent_model_hash))
        for u in forged.updates))
    (tmp_path / forged.run_id / "ledger").mkdir(parents=True, exist_ok=True)
    (tmp_path / forged.run_id / "ledger" / f"forged-{forged.round}.json").write_bytes(forged.to_bytes())
    chain.record_round(RoundRecord(run_id_hash(forged.run_id), forged.round, forged.parent_model_hash,
                                   forged.model_hash, forged.merkle_root, len(forged.updates),
                                   forged.epsilon_max_scaled, forged.sha256))
    return forged.model_hash


def bundle_of(tmp_path: Path, rnd: int, run_id: str = "r1") -> RoundBundle:
    return RoundBundle.from_bytes((tmp_path / run_id / "ledger" / f"round-{rnd}.json").read_bytes())


def test_a_bundle_that_does_not_match_its_root_fails(tmp_path: Path, chain) -> None:
    """The server records a root, but its bundle holds other leaves (a swapped update): verify names it."""
    lin = run(tmp_path, chain, rounds=1)
    honest = bundle_of(tmp_path, 1)
    moved = tuple(dataclasses.replace(u, fields=dataclasses.replace(u.fields, round=2,
                                                                    parent_model_hash=honest.model_hash))
                  for u in honest.updates)
    swapped = dataclasses.replace(honest, round=2, parent_model_hash=honest.model_hash, model_hash=b"\x02" * 32,
                                  updates=moved)
    (tmp_path / "r1" / "ledger" / swapped.file_name).write_bytes(swapped.to_bytes())
    chain.record_round(RoundRecord(run_id_hash("r1"), 2, honest.model_hash, b"\x02" * 32, honest.merkle_root, 2,
                                   swapped.epsilon_max_scaled, swapped.sha256))
    with pytest.raises(AuditFailure, match="round 2.*Merkle proof"):
        verify_model(chain, (b"\x02" * 32).hex(), [tmp_path / "r1" / "ledger"])
    assert lin.recorded == 1


def test_a_fabricated_model_beside_a_genuine_leaf_fails(tmp_path: Path, chain) -> None:
    """Round 2 records genuine signed leaves but a model the server made up: no client co-signed that hash."""
    run(tmp_path, chain, rounds=1)
    lin = Lineage(tmp_path / "r1", config_for(chain, "r1"), chain, None)
    lin.resume(like=model(0.0))
    leaves = [admitted(chain, "r1", 2, c) for c in ("a", "b")]  # clients really trained from round 1's model
    honest = endorse(lin.config, 2, model(1), model(2), leaves, {c: KEYS[c] for c in ("a", "b")}, key_of(lin.config))
    lin.record(round_result(2, model(1), model(7), leaves, endorsement=honest))  # their signatures, another model
    with pytest.raises(AuditFailure, match=r"round 2 .*co-signer a: the co-signature does not match"):
        verify(chain, tmp_path, lin.parent.hex())
    lin.record(round_result(3, model(7), model(8), [admitted(chain, "r1", 3, "a", model(7))]))  # and no co-signers
    with pytest.raises(AuditFailure, match="round 2 "):
        verify(chain, tmp_path, lin.parent.hex())


def test_a_round_without_co_signatures_fails_unless_the_auditor_trusts_the_server(tmp_path: Path, chain) -> None:
    lin = Lineage(tmp_path / "r1", config_for(chain, "r1"), chain, model(0.0))
    lin.record(round_result(1, model(0), model(1), [admitted(chain, "r1", 1, "a")]))
    with pytest.raises(AuditFailure, match="round 1 .*only the server vouches"):
        verify(chain, tmp_path, lin.parent.hex())
    assert verify_model(chain, lin.parent.hex(), [tmp_path / "r1" / "ledger"], trust_server=True).updates == 1


def test_too_few_or_unregistered_co_signers_fail(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    record_round(lin, 1, model(0), model(1), signers=("a",))  # 1 of the 2 the key needs
    with pytest.raises(AuditFailure, match="round 1 .*1 client co-signature.*at least 2"):
        verify(chain, tmp_path, lin.parent.hex())
    lin2 = start(tmp_path, chain, "r2")
    record_round(lin2, 1, model(0), model(1), signers=("a", "c"))  # c was never registered: it holds no share
    with pytest.raises(AuditFailure, match="co-signer c: not a holder of the run's 2-of-2 key"):
        verify(chain, tmp_path, lin2.parent.hex(), "r2")


def test_a_round_of_no_updates_that_changes_the_model_fails(tmp_path: Path, chain) -> None:
    run(tmp_path, chain, rounds=2)
    honest = bundle_of(tmp_path, 2)
    fake = forge(tmp_path, chain, honest, round=3, parent_model_hash=honest.model_hash, model_hash=b"\x07" * 32,
                 updates=(), cosignatures=())
    with pytest.raises(AuditFailure, match="round 3 .*no updates changed the model"):
        verify(chain, tmp_path, fake.hex())


def test_a_history_rewritten_after_evm_revert_fails(tmp_path: Path, chain) -> None:
    lin = start(tmp_path, chain)
    record_round(lin, 1, model(0), model(1))
    snapshot = chain.w3.testing.snapshot()
    record_round(lin, 2, model(1), model(2))
    chain.w3.testing.revert(snapshot)  # the operator rewinds its chain and records round 2 again, its own way
    honest = bundle_of(tmp_path, 2)
    fake = forge(tmp_path, chain, honest, model_hash=b"\x09" * 32)  # the clients' co-signatures, another model
    assert [e.model_hash for e in chain.round_events(run_id=run_id_hash("r1"))][-1] == fake
    with pytest.raises(AuditFailure, match="round 2 .*co-signature does not match"):
        verify(chain, tmp_path, fake.hex())


def test_a_lineage_spliced_into_another_run_fails(tmp_path: Path, chain) -> None:
    """Run "x" starts from an honest model and re-uses the honest run's signed round 2 as its own round 1."""
    run(tmp_path, chain, rounds=2)
    honest = bundle_of(tmp_path, 2)
    chain.start_run(run_id_hash("x"), honest.parent_model_hash)
    fake = forge(tmp_path, chain, honest, run_id="x", round=1, model_hash=b"\x0b" * 32)
    with pytest.raises(AuditFailure, match="round 1 .*signature does not match"):
        verify_model(chain, fake.hex(), [tmp_path / "x" / "ledger", tmp_path / "r1" / "ledger"])


def test_leaves_signed_on_another_devnet_fail(tmp_path: Path, chain) -> None:
    elsewhere = b"\x42" * 32  # another devnet: same chain id and contract address, its own genesis block
    lin = start(tmp_path, chain, config=config_for(chain, "r1", genesis=elsewhere))
    record_round(lin, 1, model(0), model(1), genesis=elsewhere)
    with pytest.raises(AuditFailure, match="round 1 .*bound to another chain, devnet"):
        verify(chain, tmp_path, lin.parent.hex())
    relabelled = dataclasses.replace(bundle_of(tmp_path, 1), genesis=chain.genesis)  # the server relabels them
    (tmp_path / "r1" / "ledger" / "round-1.json").write_bytes(relabelled.to_bytes())
    with pytest.raises(AuditFailure, match="round 1"):
        verify(chain, tmp_path, lin.parent.hex())



def test_an_update_from_a_client_not_registered_on_chain_fails(tmp_path: Path, chain) -> None:
    run(tmp_path, chain, rounds=1, clients=("a", "c"))  # c signed, but was never registered
    with pytest.raises(AuditFailure, match="client c: the client was never registered"):
        verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])


def test_a_revoked_client_cannot_vouch_for_later_rounds(tmp_path: Path, chain) -> None:
    chain.revoke_client(client_id_hash("b"))
    run(tmp_path, chain, rounds=1)
    with pytest.raises(AuditFailure, match="client b: .*revoked"):
        verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])


class DownThenUp:
    """A contract whose node is unreachable until ``up`` is set: records must wait in the outbox, not vanish."""

    def __init__(self, contract: LedgerContract) -> None:
        self.contract, self.up = contract, False

    def __getattr__(self, name: str):
        return getattr(self.contract, name)

    def record_round(self, record: RoundRecord):
        if not self.up:
            raise LedgerUnavailable("node down")
        return self.contract.record_round(record)

    def record_key(self, run_id, signed):
        if not self.up:
            raise LedgerUnavailable("node down")
        return self.contract.record_key(run_id, signed)


def test_records_wait_in_the_outbox_while_the_ledger_is_down(tmp_path: Path, chain) -> None:
    flaky = DownThenUp(chain)
    lin = run(tmp_path, flaky, rounds=2)
    assert lin.outbox.flush(flaky) == 3 and chain.latest_round(run_id_hash("r1")) == 0  # the key, then 2 rounds
    flaky.up = True
    assert lin.outbox.flush(flaky) == 0
    assert chain.latest_round(run_id_hash("r1")) == 2
    lin.outbox.push(chain.round_events(run_id=run_id_hash("r1"))[-1].as_record())  # sent, then a crash
    assert lin.outbox.flush(chain) == 0  # already on chain: counts as sent, not as an error
    verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])


def test_training_pauses_past_the_unrecorded_limit_and_resumes_when_the_ledger_is_back(tmp_path: Path, chain) -> None:
    flaky = DownThenUp(chain)
    naps: list[float] = []

    def nap(seconds: float) -> None:  # the ledger comes back while training waits
        naps.append(seconds)
        flaky.up = True

    config = dataclasses.replace(config_for(chain, "p"), max_unrecorded_rounds=1)
    lin = Lineage(tmp_path / "p", config, chain, model(0.0), sleep=nap)
    lin.record_key(key_of(config))  # on chain before the node went down
    lin.contract = flaky
    record_round(lin, 1, model(0), model(1))
    assert not naps and len(lin.outbox.pending()) == 1  # one round ahead of the ledger is allowed
    record_round(lin, 2, model(1), model(2))
    assert len(naps) == 1 and lin.outbox.pending() == []
    assert [e.round for e in chain.round_events(run_id=run_id_hash("p"))] == [1, 2]


def test_unsent_records_survive_a_restart(tmp_path: Path, chain) -> None:
    from ledger.outbox import Outbox

    flaky = DownThenUp(chain)
    run(tmp_path, flaky, rounds=2)
    del flaky  # the server process dies with two records unsent
    reopened = Outbox(tmp_path / "r1" / "ledger")
    assert [getattr(r, "round", "key") for r in reopened.pending()] == ["key", 1, 2]
    assert reopened.flush(chain) == 0 and len(reopened.receipts()) == 2
    verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])


def test_a_model_file_anywhere_in_its_run_directory_finds_the_run_bundles(tmp_path: Path, chain, monkeypatch) -> None:
    """`audit verify runs/<id>/models/round-2.safetensors`, or MLflow's copy under mlruns/.../artifacts, looks in the
    run's ledger/ as model.safetensors does; a bundle found nowhere names where it looked and the flag to use."""
    import shutil

    from fedproof.cli.audit import _bundle_dirs

    lin = run(tmp_path, chain)
    deep = tmp_path / "r1" / "mlruns" / "1" / "abc" / "artifacts"
    deep.mkdir(parents=True)
    shutil.copy(tmp_path / "r1" / "model.safetensors", deep / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    for copy in (tmp_path / "r1" / "model.safetensors", deep / "model.safetensors"):
        assert verify_model(chain, copy, _bundle_dirs(None, copy)).model_hash == lin.parent
    elsewhere = tmp_path / "outsider"
    elsewhere.mkdir()
    shutil.copy(tmp_path / "r1" / "model.safetensors", elsewhere / "m.safetensors")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(AuditFailure, match=r"searched: no directory.*--bundles"):
        verify_model(chain, elsewhere / "m.safetensors", _bundle_dirs(None, elsewhere / "m.safetensors"))


def test_the_wrong_ledger_is_called_the_wrong_ledger(tmp_path: Path, chain) -> None:
    from ledger.audit import check_pinned
    from ledger.trust import LedgerTrust

    other = LedgerContract.deploy(LedgerContract.in_memory())
    pin = LedgerTrust(other.chain_id, other.genesis, bytes.fromhex(other.address[2:]))
    with pytest.raises(AuditFailure, match="wrong ledger"):
        check_pinned(chain, pin)
    run(tmp_path, chain)
    with pytest.raises(ModelNotRecorded, match="if the run recorded elsewhere, name its ledger: --pin"):
        verify_model(other, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])


def test_a_run_killed_between_its_bundle_and_its_record_resumes_with_the_round_on_chain(tmp_path: Path, chain,
                                                                                        monkeypatch) -> None:
    """The bundle file is written first; a kill before its record reaches the outbox left resume with a round the
    chain never heard of, and every later record out of order."""
    from ledger.outbox import Outbox

    lin = start(tmp_path, chain)
    record_round(lin, 1, model(0), model(1))

    def killed(self, record) -> None:
        raise KeyboardInterrupt("SIGKILL")

    monkeypatch.setattr(Outbox, "push", killed)
    with pytest.raises(KeyboardInterrupt):
        record_round(lin, 2, model(1), model(2))
    monkeypatch.undo()
    assert (tmp_path / "r1" / "ledger" / "round-2.json").exists() and chain.latest_round(run_id_hash("r1")) == 1
    again = Lineage(tmp_path / "r1", lin.config, chain)
    done, _ = again.resume(like=model(0))
    assert done == 2 and chain.latest_round(run_id_hash("r1")) == 2
    record_round(again, 3, model(2), model(3))  # the lineage goes on, in order
    assert [s.round for s in lineage(chain, again.parent)] == [3, 2, 1]
    assert again.resume(like=model(0))[0] == 3 and chain.latest_round(run_id_hash("r1")) == 3  # resent: a no-op
