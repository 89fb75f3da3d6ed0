"""Encrypted FedAvg on the server: bad updates are dropped alone, the committee must agree, results match FedAvg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedproof.config import RunConfig
from fedproof.protocol import CIPHERTEXTS_KEY, SUM_KEY, ClientReport, EncryptedPayload
from fedproof.weights import flatten
from fl_client.secure_update import decrypt_sum, encrypt_update
from fl_server.secure_aggregation import DecryptionCommittee, EncryptedFedAvg
from privacy.errors import PlaintextRangeError
from privacy.he import PublicContext, SecretContext

SECRET = SecretContext.generate()
PUBLIC = PublicContext.from_bytes(SECRET.public().to_bytes())
NODES = [11, 12, 13, 14]
COUNTS = {11: 300, 12: 500, 13: 50, 14: 1000}


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower refuses to create Messages outside a running app unless a task identity is set."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


class FakeGrid:
    """Stands in for Flower's Grid: clients answer decrypt requests with ``answer(node, payload)``."""

    def __init__(self, answer=None) -> None:
        self.asked: list[int] = []
        self.answer = answer or (lambda node, payload: decrypt_sum(payload, SECRET))

    def get_node_ids(self) -> list[int]:
        return NODES

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            values = self.answer(node, EncryptedPayload.take(msg.content))
            if values is None:
                replies.append(Message(Error(code=0, reason="client crashed"), reply_to=msg))
            else:
                record = ArrayRecord({SUM_KEY: Array(np.asarray(values, dtype=np.float64))})
                replies.append(Message(RecordDict({SUM_KEY: record}), reply_to=msg))
        return replies


def global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"w": Array(rng.normal(size=(30, 200)).astype(np.float32)),
                        "b": Array(rng.normal(size=(5000,)).astype(np.float32))})


def trained(node: int, base: ArrayRecord) -> ArrayRecord:
    rng = np.random.default_rng(node)
    return ArrayRecord({k: Array(a + rng.uniform(-0.5, 0.5, a.shape).astype(np.float32))
                        for k, a in zip(base.keys(), base.to_numpy_ndarrays())})


def reply(node: int, base: ArrayRecord, payload: EncryptedPayload | None = None) -> Message:
    train = Message(RecordDict(), dst_node_id=node, message_type="train")
    payload = payload or encrypt_update(trained(node, base), base, COUNTS[node], SECRET)
    content = payload.put(RecordDict({"client": ClientReport(str(node)).to_record()}))
    content["metrics"] = MetricRecord({"num-examples": COUNTS[node], "train_loss": 1.0})
    return Message(content, reply_to=train)


def fedavg(nodes: list[int], base: ArrayRecord) -> np.ndarray:
    total = sum(COUNTS[n] for n in nodes)
    return sum(COUNTS[n] * flatten(trained(n, base)) for n in nodes) / total


def strategy(grid: FakeGrid, base: ArrayRecord, committee: int = 2, events: list | None = None) -> EncryptedFedAvg:
    events = events if events is not None else []
    s = EncryptedFedAvg(
        committee=DecryptionCommittee(committee, PUBLIC, seed=7, timeout=5),
        on_rejected=lambda rnd, why: events.append(("rejected", why)),
        on_failed=lambda rnd, why: events.append(("failed", why)),
        min_available_nodes=len(NODES),
    )
    s.configure_train(1, base, ConfigRecord(RunConfig().to_mapping()), grid)
    return s


def test_encrypted_fedavg_equals_plaintext_fedavg() -> None:
    base, grid = global_model(), FakeGrid()
    arrays, metrics = strategy(grid, base).aggregate_train(1, [reply(n, base) for n in NODES])
    assert arrays is not None and metrics is not None
    assert np.abs(flatten(arrays) - fedavg(NODES, base)).max() < 1e-5  # float32 rounding dominates
    assert len(grid.asked) == 2 and set(grid.asked) <= set(NODES)
    assert list(arrays.keys()) == list(base.keys())


def test_committee_is_redrawn_each_round_from_the_participants() -> None:
    base = global_model()
    drawn = set()
    for rnd in range(1, 9):
        grid = FakeGrid()
        s = strategy(grid, base)
        s.aggregate_train(rnd, [reply(n, base) for n in NODES[:3]])
        assert set(grid.asked) <= set(NODES[:3])
        drawn.add(tuple(sorted(grid.asked)))
    assert len(drawn) > 1



@pytest.mark.parametrize("damage", ["bit-flip", "truncated", "wrong-length", "no-payload", "bad-count"])
def test_a_damaged_update_is_rejected_and_the_round_goes_on(damage: str) -> None:
    base, events = global_model(), []
    good = [reply(n, base) for n in NODES[:3]]
    bad = reply(14, base)
    if damage == "bit-flip":  # in transit: the digest no longer matches
        chunks = bad.content[CIPHERTEXTS_KEY]
        first = next(iter(chunks.keys()))
        data = chunks[first].data
        chunks[first] = Array(dtype="bytes", shape=(len(data),), stype=chunks[first].stype,
                              data=data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    elif damage == "truncated":  # by the sender: digest matches, SEAL refuses the bytes
        payload = EncryptedPayload.take(bad.content)
        cut = (payload.chunks[0][:-50], *payload.chunks[1:])
        bad = reply(14, base, EncryptedPayload(cut, payload.num_values))
    elif damage == "wrong-length":
        bad = reply(14, base, EncryptedPayload(tuple(SECRET.encrypt(np.zeros(10))), 10))
    elif damage == "no-payload":
        del bad.content[CIPHERTEXTS_KEY]
    else:
        bad.content["metrics"] = MetricRecord({"num-examples": 0})
    arrays, _ = strategy(FakeGrid(), base, events=events).aggregate_train(1, [*good, bad])
    assert [kind for kind, _ in events] == ["rejected"]
    assert np.abs(flatten(arrays) - fedavg(NODES[:3], base)).max() < 1e-5


def test_committee_disagreement_voids_the_round() -> None:
    base, events = global_model(), []
    liar = lambda node, payload: decrypt_sum(payload, SECRET) + (1.0 if node == grid.asked[0] else 0.0)
    grid = FakeGrid(liar)
    arrays, metrics = strategy(grid, base, events=events).aggregate_train(1, [reply(n, base) for n in NODES])
    assert arrays is None and metrics is not None  # the model stays as it was; the run goes on
    assert events and events[0][0] == "failed" and "differing by" in events[0][1]


def test_a_committee_member_that_drops_out_is_replaced() -> None:
    base = global_model()
    first: list[int] = []

    def flaky(node: int, payload: EncryptedPayload):
        if not first:
            first.append(node)
            return None
        return decrypt_sum(payload, SECRET)

    grid = FakeGrid(flaky)
    arrays, _ = strategy(grid, base).aggregate_train(1, [reply(n, base) for n in NODES])
    assert len(grid.asked) == 3 and len(set(grid.asked)) == 3
    assert np.abs(flatten(arrays) - fedavg(NODES, base)).max() < 1e-5


def test_round_fails_cleanly_when_no_committee_can_be_formed() -> None:
    base, events = global_model(), []
    arrays, _ = strategy(FakeGrid(lambda n, p: None), base, events=events).aggregate_train(
        1, [reply(n, base) for n in NODES]
    )
    assert arrays is None and events[0][0] == "failed" and "committee members decrypted" in events[0][1]


def test_a_client_refuses_to_encrypt_a_diverged_or_oversized_update() -> None:
    base = global_model()
    nan = ArrayRecord({k: Array(np.full(a.shape, np.nan, np.float32))
                       for k, a in zip(base.keys(), base.to_numpy_ndarrays())})
    with pytest.raises(PlaintextRangeError, match="NaN"):
        encrypt_update(nan, base, 10, SECRET)
    far = ArrayRecord({k: Array(a + 100) for k, a in zip(base.keys(), base.to_numpy_ndarrays())})
    with pytest.raises(PlaintextRangeError, match="too large"):
        encrypt_update(far, base, 10, SECRET)


def test_he_run_matches_plaintext_and_server_never_loads_a_secret_key(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServerApp runs in this process, the ClientApps in Ray workers: a secret key here fails the test."""
    from fedproof.simulation import simulate

    def refuse(*args, **kwargs):
        raise AssertionError("a secret CKKS context was created in the server process")

    monkeypatch.setattr(SecretContext, "__init__", refuse)
    common = dict(clients=3, rounds=2, data_dir=str(synthetic_dir), run_dir=str(tmp_path), dp=False, ledger=False)
    he = simulate(RunConfig(**common, run_id="he", he=True), num_cpus=2)
    plain = simulate(RunConfig(**common, run_id="plain", he=False), num_cpus=2)
    for a, b in zip(he.rounds, plain.rounds):
        assert abs(a.accuracy - b.accuracy) <= 0.003
        assert a.rejected_updates == 0 and not a.failed
        assert a.upload_bytes_per_param is not None and a.upload_bytes_per_param <= 12
        assert b.upload_bytes_per_param == pytest.approx(4.0, rel=0.01)  # float32 plus .npy headers
    he_config = json.loads((tmp_path / "he" / "run.json").read_text())["config"]
    assert Path(he_config["key-set"]).parent == tmp_path / "he"
