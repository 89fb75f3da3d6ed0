"""The server's gate end to end: replies signed by fl_client, checked by fl_server before FedAvg sees them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedproof.config import RunConfig
from fedproof.keys import init_key_set
from fedproof.protocol import SIGNED_KEY, ClientReport
from fedproof.weights import flatten
from fl_client.signing import sign_update
from fl_server.admission import Admission
from fl_server.strategy import GatedFedAvg
from ledger.verification import AllowList, UpdateVerifier

CONTRACT = "0x" + "ab" * 20


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return init_key_set(tmp_path_factory.mktemp("keys"), ["0", "1", "2", "stranger"], he=False)


class Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def config(keys, **changes) -> RunConfig:
    base = RunConfig(run_id="run-a", chain_id=31337, ledger_contract=CONTRACT, key_set=str(keys.directory), he=False)
    return dataclasses.replace(base, **changes)


def update(client: str, value: float, keys, server_round: int = 1, **changes) -> Message:
    """A client's signed plaintext reply; ``changes`` alter the config it signs under (replays)."""
    train = Message(RecordDict(), dst_node_id=int(client) + 1 if client.isdigit() else 99, message_type="train")
    arrays = ArrayRecord({"w": Array(np.full((4, 5), value, np.float32))})
    content = RecordDict({"arrays": arrays, "client": ClientReport(client).to_record(),
                          "metrics": MetricRecord({"num-examples": 10 * (1 + len(client))})})
    context = Context(run_id=1, node_id=1, node_config={"client-id": client}, state=RecordDict(), run_config={})
    sign_update(content, config(keys, **changes), context, server_round, 10 * (1 + len(client)), None)
    return Message(content, reply_to=train)


def run_round(keys, replies: list[Message]):
    rejected, aggregated = [], []
    allow = AllowList.load(keys.allowlist).revoke("stranger")
    strategy = GatedFedAvg(
        admission=Admission(UpdateVerifier(allow, 31337, bytes.fromhex("ab" * 20), "run-a")),
        on_rejected=lambda rnd, why: rejected.append(why),
        on_aggregated=lambda rnd, parent, new, leaves: aggregated.append(leaves),
        min_available_nodes=3,
    )
    base = ArrayRecord({"w": Array(np.zeros((4, 5), np.float32))})
    strategy.configure_train(1, base, ConfigRecord({}), Grid())
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, rejected, aggregated


def test_genuine_updates_are_aggregated_and_become_leaves(keys) -> None:
    arrays, rejected, aggregated = run_round(keys, [update("0", 1.0, keys), update("1", 3.0, keys)])
    assert not rejected
    assert np.allclose(flatten(arrays), 2.0)
    assert sorted(leaf.fields.client_id for leaf in aggregated[0]) == ["0", "1"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("replayed-round", "round 2"),
        ("other-run", "run 'run-b'"),
        ("other-chain", "chain 1"),
        ("other-contract", "another contract"),
        ("unknown", "not on the allow-list"),
        ("revoked", "revoked"),
        ("duplicate", "second update"),
        ("tampered", "does not hash"),
        ("forged", "signature does not match"),
        ("unsigned", "not signed"),
    ],
)
def test_bad_updates_never_reach_the_aggregate(keys, bad: str, reason: str) -> None:
    good = [update("0", 1.0, keys), update("1", 3.0, keys)]
    if bad == "replayed-round":
        extra = update("2", 100.0, keys, server_round=2)
    elif bad == "other-run":
        extra = update("2", 100.0, keys, run_id="run-b")
    elif bad == "other-chain":
        extra = update("2", 100.0, keys, chain_id=1)
    elif bad == "other-contract":
        extra = update("2", 100.0, keys, ledger_contract="0x" + "cd" * 20)
    elif bad == "unknown":  # a key that is not on the allow-list
        (keys.directory / "clients" / "9.pem").write_bytes((keys.directory / "clients" / "2.pem").read_bytes())
        extra = update("9", 100.0, keys)
    elif bad == "revoked":
        extra = update("stranger", 100.0, keys)
    elif bad == "duplicate":
        extra = update("0", 100.0, keys)
    elif bad == "tampered":  # the bytes changed after signing
        extra = update("2", 100.0, keys)
        extra.content["arrays"] = ArrayRecord({"w": Array(np.full((4, 5), 1e6, np.float32))})
    elif bad == "forged":  # the signed record claims client 2, signed with client 1's key
        extra = update("2", 100.0, keys)
        extra.content[SIGNED_KEY]["signature"] = bytes(update("1", 100.0, keys).content[SIGNED_KEY]["signature"])
    else:
        extra = update("2", 100.0, keys)
        del extra.content[SIGNED_KEY]
    arrays, rejected, aggregated = run_round(keys, [*good, extra])
    assert len(rejected) == 1 and reason in rejected[0], rejected
    assert np.allclose(flatten(arrays), 2.0)  # exactly the two genuine updates
    assert len(aggregated[0]) == 2


def test_signed_epsilon_and_count_are_what_the_client_claimed(keys) -> None:
    msg = update("0", 1.0, keys)
    msg.content["metrics"] = MetricRecord({"num-examples": 10_000})  # inflate its weight after signing
    _, rejected, _ = run_round(keys, [msg, update("1", 3.0, keys)])
    assert len(rejected) == 1 and "example count" in rejected[0]


def test_key_set_files_are_private(tmp_path: Path) -> None:
    keys = init_key_set(tmp_path, ["a", "b"], he=True)
    assert {p.name for p in keys.directory.rglob("*") if p.is_file()} == {
        "he-client.ctx", "he-server.ctx", "allowlist.json", "a.pem", "b.pem"}
    for path in Path(keys.directory).rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path


def test_a_client_that_crashes_mid_round_does_not_fail_it_and_is_not_in_the_record(keys) -> None:
    from flwr.app import Error

    crashed = Message(Error(code=0, reason="ClientApp raised: out of memory"),
                      reply_to=Message(RecordDict(), dst_node_id=3, message_type="train"))
    arrays, rejected, aggregated = run_round(keys, [update("0", 1.0, keys), crashed, update("1", 3.0, keys)])
    assert np.allclose(flatten(arrays), 2.0) and not rejected
    assert sorted(leaf.fields.client_id for leaf in aggregated[0]) == ["0", "1"]  # exactly what was aggregated
