"""The server's gate end to end: replies signed by fl_client, decoded and admitted by fl_server before aggregation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fakegrid import FakeGrid
from rounds import signed_reply
from fedproof.core.config import RunConfig
from fedproof.core.keys import init_key_set
from fedproof.core.protocol import SIGNED_KEY
from fedproof.core.weights import flatten
from fl_server.admission import Admission
from fl_server.round import RoundPlan, RoundResult, run_round
from ledger.verification import Domain, AllowList, UpdateVerifier

pytestmark = pytest.mark.usefixtures("virtual_exchange_clock")  # a silent node's timeout passes at once

CONTRACT = "0x" + "ab" * 20


PARENT = ArrayRecord({"w": Array(np.zeros((4, 5), np.float32))})


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    return init_key_set(tmp_path_factory.mktemp("keys"), ["0", "1", "2", "stranger"])


def config(keys, **changes) -> RunConfig:
    base = RunConfig(run_id="run-a", chain_id=31337, ledger_contract=CONTRACT, key_set=str(keys.directory), he=False)
    return dataclasses.replace(base, **changes)


def update(client: str, value: float, keys, server_round: int = 1, **changes) -> RecordDict:
    """A client's signed plaintext reply; ``changes`` alter the config it signs under (replays)."""
    arrays = ArrayRecord({"w": Array(np.full((4, 5), value, np.float32))})
    return signed_reply(config(keys, **changes), PARENT, client, arrays, 10 * (1 + len(client)), server_round)


def run(keys, replies: list) -> RoundResult:
    """One round over nodes 1..n, node i answering ``replies[i-1]``; evaluation off."""
    allow = AllowList.load(keys.allowlist).revoke("stranger")
    plan = RoundPlan(
        settings={"run-id": "run-a"}, fraction_train=1.0, fraction_evaluate=0.0, seed=1, timeout=5,
        admission=Admission(UpdateVerifier(allow, Domain(31337, bytes.fromhex("ab" * 20), "run-a"))),
        evaluate=lambda arrays: (0.0, 0.0), max_abs_delta=4.0,
    )
    grid = FakeGrid(list(range(1, len(replies) + 1)), train=lambda node, msg: replies[node - 1])
    return run_round(grid, plan, 1, PARENT)


def rejected(result: RoundResult) -> list[str]:
    return [str(r) for r in result.rejections]


def test_genuine_updates_are_aggregated_and_become_leaves(keys) -> None:
    result = run(keys, [update("0", 1.0, keys), update("1", 3.0, keys)])
    assert not result.rejections and not result.failure
    assert np.allclose(flatten(result.model), 2.0)
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == ["0", "1"]


@pytest.mark.parametrize(
    "bad, reason, code",
    [
        ("replayed-round", "round 2", "replayed"),
        ("other-run", "run 'run-b'", "replayed"),
        ("other-chain", "chain 1", "replayed"),
        ("other-contract", "another contract", "replayed"),
        ("unknown", "not on the allow-list", "unknown-client"),
        ("revoked", "revoked", "revoked-client"),
        ("duplicate", "second update", "duplicate"),
        ("tampered", "does not hash", "payload-mismatch"),
        ("forged", "signature does not match", "bad-signature"),
        ("unsigned", "not signed", "unsigned"),
    ],
)
def test_bad_updates_never_reach_the_aggregate(keys, bad: str, reason: str, code: str) -> None:
    good = [update("0", 1.0, keys), update("1", 3.0, keys)]
    if bad == "replayed-round":
        extra = update("2", 2.5, keys, server_round=2)
    elif bad == "other-run":
        extra = update("2", 2.5, keys, run_id="run-b")
    elif bad == "other-chain":
        extra = update("2", 2.5, keys, chain_id=1)
    elif bad == "other-contract":
        extra = update("2", 2.5, keys, ledger_contract="0x" + "cd" * 20)
    elif bad == "unknown":  # a key that is not on the allow-list
        (keys.directory / "clients" / "9.pem").write_bytes((keys.directory / "clients" / "2.pem").read_bytes())
        extra = update("9", 2.5, keys)
    elif bad == "revoked":
        extra = update("stranger", 2.5, keys)
    elif bad == "duplicate":
        extra = update("0", 2.5, keys)
    elif bad == "tampered":  # the bytes changed after signing
        extra = update("2", 2.5, keys)
        extra["arrays"] = ArrayRecord({"w": Array(np.full((4, 5), 3.9, np.float32))})
    elif bad == "forged":  # the signed record claims client 2, signed with client 1's key
        extra = update("2", 2.5, keys)
        extra[SIGNED_KEY]["signature"] = bytes(update("1", 2.5, keys)[SIGNED_KEY]["signature"])
    else:
        extra = update("2", 2.5, keys)
        del extra[SIGNED_KEY]
    result = run(keys, [*good, extra])
    assert len(result.rejections) == 1 and reason in rejected(result)[0], rejected(result)
    assert result.rejections[0].reason.value == code
    assert np.allclose(flatten(result.model), 2.0)  # exactly the two genuine updates
    assert len(result.leaves) == 2


def test_signed_epsilon_and_count_are_what_the_client_claimed(keys) -> None:
    content = update("0", 1.0, keys)
    content["metrics"] = MetricRecord({"num-examples": 10_000})  # inflate its weight after signing
    result = run(keys, [content, update("1", 3.0, keys)])
    assert [r.reason.value for r in result.rejections] == ["bad-signature"]
    assert "example count" in rejected(result)[0]


def test_key_set_files_are_private(tmp_path: Path) -> None:
    keys = init_key_set(tmp_path, ["a", "b"])
    assert {p.name for p in keys.directory.rglob("*") if p.is_file()} == {"allowlist.json", "a.pem", "b.pem"}
    for path in Path(keys.directory).rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o077 == 0, path


def test_a_client_that_crashes_or_never_answers_does_not_fail_the_round_and_is_not_in_the_record(keys) -> None:
    crashed = Error(code=0, reason="ClientApp raised: out of memory")
    result = run(keys, [update("0", 1.0, keys), crashed, None, update("1", 3.0, keys)])
    assert np.allclose(flatten(result.model), 2.0) and not result.failure
    assert sorted(r.reason.value for r in result.rejections) == ["client-error", "no-reply"]
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == ["0", "1"]  # exactly what was aggregated


def test_a_claimed_weight_above_the_registered_one_is_refused_at_the_gate(keys) -> None:
    allow = AllowList.load(keys.allowlist).with_weights({"0": 20, "1": 25})
    plan = RoundPlan(settings={"run-id": "run-a"}, fraction_train=1.0, fraction_evaluate=0.0, seed=1, timeout=5,
                     admission=Admission(UpdateVerifier(allow, Domain(31337, bytes.fromhex("ab" * 20), "run-a"))),
                     evaluate=lambda arrays: (0.0, 0.0), max_abs_delta=4.0)
    honest, within = update("0", 1.0, keys), update("1", 3.0, keys)  # signed counts: 20 (<= 20) and 20 (<= 25)
    boosted = signed_reply(config(keys), PARENT, "0", ArrayRecord({"w": Array(np.full((4, 5), 3.0, np.float32))}), 21)
    replies = [honest, within, boosted]
    grid = FakeGrid([1, 2, 3], train=lambda node, msg: replies[node - 1])
    result = run_round(grid, plan, 1, ArrayRecord({"w": Array(np.zeros((4, 5), np.float32))}))
    assert [(r.client_id, r.reason.value) for r in result.rejections] == [("0", "bad-example-count")]
    assert "claims 21 examples, above its registered weight 20" in result.rejections[0].detail
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == ["0", "1"]


def test_registered_weights_survive_the_allow_list_file(tmp_path: Path) -> None:
    from fedproof.base.files import write_atomically
    from ledger.errors import KeyFileError

    allow = AllowList({"a": bytes(32)}).with_weights({"a": 600})
    path = write_atomically(tmp_path / "allow.json", allow.to_json().encode())
    assert AllowList.load(path) == allow and AllowList.load(path).revoke("a").weights == {"a": 600}
    for bad in ('"600"', "0", "2147483648", "1.5"):
        path.write_text(allow.to_json().replace("600", bad))
        with pytest.raises(KeyFileError, match="weights"):
            AllowList.load(path)
