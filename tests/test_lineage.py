"""Lineage records and audits on an in-process chain (eth-tester): what verify accepts and what it refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedproof.config import RunConfig
from fl_server.lineage import Lineage, register_clients
from rounds import round_result
from ledger.audit import AuditFailure, ModelNotRecorded, lineage, verify_model
from ledger.bundle import RoundBundle, SignedUpdate
from ledger.contract import LedgerContract, RoundRecord
from ledger.errors import LedgerUnavailable
from ledger.signing import SignedFields, SigningKey, client_id_hash, payload_digest, run_id_hash, scale_epsilon
from ledger.verification import AllowList

KEYS = {c: SigningKey.generate() for c in ("a", "b", "c")}


@pytest.fixture()
def chain() -> LedgerContract:
    contract = LedgerContract.deploy(LedgerContract.in_memory())
    register_clients(contract, AllowList({c: k.public_key for c, k in KEYS.items() if c != "c"}))
    return contract


def model(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((3, 3), value, np.float32))})


def admitted(contract: LedgerContract, run_id: str, rnd: int, client: str) -> SignedUpdate:
    fields = SignedFields(chain_id=contract.chain_id, contract=bytes.fromhex(contract.address[2:]), run_id=run_id,
                          round=rnd, client_id=client, payload_sha256=payload_digest([f"{client}{rnd}".encode()]),
                          num_examples=100, epsilon_scaled=scale_epsilon(0.5 * rnd))
    return SignedUpdate(fields, KEYS[client].public_key, KEYS[client].sign(fields))


def run(tmp_path: Path, contract: LedgerContract, rounds: int = 3, run_id: str = "r1",
        clients: tuple[str, ...] = ("a", "b")) -> Lineage:
    config = RunConfig(run_id=run_id, chain_id=contract.chain_id, ledger_contract=contract.address)
    lin = Lineage(tmp_path / run_id, config, contract, model(0.0))
    for rnd in range(1, rounds + 1):
        lin.record(round_result(rnd, model(rnd - 1), model(rnd), [admitted(contract, run_id, rnd, c) for c in clients]))
    lin.final_model(tmp_path / run_id / "model.safetensors")
    return lin


def test_lineage_walks_back_to_the_initial_model_and_verify_passes(tmp_path: Path, chain) -> None:
    lin = run(tmp_path, chain)
    lin.record(round_result(4, model(3), None, failure="committee disagreed"))  # a void round: recorded, but it produced nothing
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


def test_a_bundle_that_does_not_match_its_root_fails(tmp_path: Path, chain) -> None:
    """The server records a root, but its bundle holds other leaves (a swapped update): verify names it."""
    lin = run(tmp_path, chain, rounds=1)
    honest = RoundBundle.from_bytes((tmp_path / "r1" / "ledger" / "round-1.json").read_bytes())
    moved = tuple(dataclasses.replace(u, fields=dataclasses.replace(u.fields, round=2)) for u in honest.updates)
    swapped = dataclasses.replace(honest, round=2, parent_model_hash=honest.model_hash, model_hash=b"\x02" * 32,
                                  updates=moved)
    (tmp_path / "r1" / "ledger" / swapped.file_name).write_bytes(swapped.to_bytes())
    chain.record_round(RoundRecord(run_id_hash("r1"), 2, honest.model_hash, b"\x02" * 32, honest.merkle_root, 2,
                                   swapped.epsilon_max_scaled, swapped.sha256))
    with pytest.raises(AuditFailure, match="round 2.*Merkle proof"):
        verify_model(chain, (b"\x02" * 32).hex(), [tmp_path / "r1" / "ledger"])
    assert lin.recorded == 1


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


def test_records_wait_in_the_outbox_while_the_ledger_is_down(tmp_path: Path, chain) -> None:
    flaky = DownThenUp(chain)
    lin = run(tmp_path, flaky, rounds=2)
    assert lin.outbox.flush(flaky) == 2 and chain.latest_round(run_id_hash("r1")) == 0
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

    config = RunConfig(run_id="p", chain_id=chain.chain_id, ledger_contract=chain.address, max_unrecorded_rounds=1)
    lin = Lineage(tmp_path / "p", config, flaky, model(0.0), sleep=nap)
    lin.record(round_result(1, model(0), model(1), [admitted(chain, "p", 1, "a")]))
    assert not naps and len(lin.outbox.pending()) == 1  # one round ahead of the ledger is allowed
    lin.record(round_result(2, model(1), model(2), [admitted(chain, "p", 2, "a")]))
    assert len(naps) == 1 and lin.outbox.pending() == []
    assert [e.round for e in chain.round_events(run_id=run_id_hash("p"))] == [1, 2]


def test_unsent_records_survive_a_restart(tmp_path: Path, chain) -> None:
    from ledger.outbox import Outbox

    flaky = DownThenUp(chain)
    run(tmp_path, flaky, rounds=2)
    del flaky  # the server process dies with two records unsent
    reopened = Outbox(tmp_path / "r1" / "ledger")
    assert [r.round for r in reopened.pending()] == [1, 2]
    assert reopened.flush(chain) == 0 and len(reopened.receipts()) == 2
    verify_model(chain, tmp_path / "r1" / "model.safetensors", [tmp_path / "r1" / "ledger"])
