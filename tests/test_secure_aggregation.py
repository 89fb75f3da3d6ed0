"""Shared-key encrypted rounds (he-scheme=shared-key): bad updates are dropped alone, committee replies are checked
and must agree, results match FedAvg."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fakegrid import FakeGrid, virtual_time
from fedproof.config import RunConfig
from fedproof.keys import init_key_set
from fedproof.protocol import (CIPHERTEXTS_KEY, SIGNED_KEY, SUM_KEY, ClientReport, EncryptedPayload,
                               pack_ciphertexts, unpack_ciphertexts)
from fedproof.weights import flatten
from fl_client.secure_update import decrypt_sum, encrypt_update
from fl_client.signing import sign_decryption, sign_update
from fedproof.weights import hash_model
from fl_server.admission import Admission
from fl_server.committee import Committee
from fl_server.round import RoundPlan, RoundResult, run_round
from ledger.verification import Domain, AllowList, UpdateVerifier
from privacy.errors import PlaintextRangeError
from privacy.he import PublicContext, SecretContext

NODES = [11, 12, 13, 14]
COUNTS = {11: 300, 12: 500, 13: 50, 14: 1000}
KEYS = init_key_set(Path(tempfile.mkdtemp(prefix="fedproof-he-keys-")), [str(n) for n in NODES], he=True)
SECRET = SecretContext.load(KEYS.he_client)
PUBLIC = PublicContext.load(KEYS.he_server)
CONFIG = RunConfig(run_id="he-run", chain_id=31337, ledger_contract="0x" + "ab" * 20, key_set=str(KEYS.directory),
                   he_scheme="shared-key")


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower refuses to create Messages outside a running app unless a task identity is set."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def context(node: int) -> Context:
    return Context(run_id=1, node_id=node, node_config={"client-id": str(node)}, state=RecordDict(), run_config={})


def global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"w": Array(rng.normal(size=(30, 200)).astype(np.float32)),
                        "b": Array(rng.normal(size=(5000,)).astype(np.float32))})


def trained(node: int, base: ArrayRecord) -> ArrayRecord:
    rng = np.random.default_rng(node)
    return ArrayRecord({k: Array(a + rng.uniform(-0.5, 0.5, a.shape).astype(np.float32))
                        for k, a in zip(base.keys(), base.to_numpy_ndarrays())})


def reply(node: int, base: ArrayRecord, payload: EncryptedPayload | None = None, count: int | None = None,
          server_round: int = 1) -> RecordDict:
    """A client's signed encrypted train reply (``payload``: what it encrypted instead of its real update)."""
    payload = payload or encrypt_update(trained(node, base), base, COUNTS[node], SECRET)
    content = payload.put(RecordDict({"client": ClientReport(str(node)).to_record()}))
    count = COUNTS[node] if count is None else count
    content["metrics"] = MetricRecord({"num-examples": count, "train_loss": 1.0})
    return sign_update(content, CONFIG, context(node), server_round, count, None, hash_model(base, CONFIG.run_id))


def honest_decryption(node: int, msg: Message) -> RecordDict:
    """A committee member's reply: the decrypted sum, signed."""
    config = msg.content["config"]
    values = decrypt_sum(EncryptedPayload.take(msg.content), SECRET)
    content = RecordDict({SUM_KEY: ArrayRecord({SUM_KEY: Array(values)})})
    return sign_decryption(content, values.tobytes(), CONFIG, context(node), int(config["server-round"]))


def fedavg(nodes: list[int], base: ArrayRecord) -> np.ndarray:
    total = sum(COUNTS[n] for n in nodes)
    return sum(COUNTS[n] * flatten(trained(n, base)) for n in nodes) / total


def run(base: ArrayRecord, replies: dict[int, RecordDict], decrypt=honest_decryption, committee: int = 2,
        server_round: int = 1) -> tuple[RoundResult, FakeGrid]:
    allow = AllowList.load(KEYS.allowlist)
    plan = RoundPlan(
        settings=CONFIG.to_mapping(), fraction_train=1.0, fraction_evaluate=0.0, seed=7, timeout=5,
        admission=Admission(UpdateVerifier(allow, CONFIG.domain())),
        evaluate=lambda arrays: (0.0, 0.0), max_abs_delta=4.0, he=PUBLIC,
        committee=Committee(committee, seed=7, timeout=5, params=PUBLIC.params),
    )
    grid = FakeGrid(sorted(replies), train=lambda node, msg: replies[node], query_decrypt=decrypt)
    with virtual_time():
        return run_round(grid, plan, server_round, base), grid


def test_encrypted_fedavg_equals_plaintext_fedavg() -> None:
    base = global_model()
    result, grid = run(base, {n: reply(n, base) for n in NODES})
    assert result.model is not None and not result.rejections
    assert np.abs(flatten(result.model) - fedavg(NODES, base)).max() < 1e-5  # float32 rounding dominates
    assert len(grid.asked["query.decrypt"]) == 2 and set(grid.asked["query.decrypt"]) <= set(NODES)
    assert list(result.model.keys()) == list(base.keys())
    assert result.metrics.upload_bytes_per_param is not None and result.metrics.upload_bytes_per_param <= 12


def test_committee_is_redrawn_each_round_from_the_participants() -> None:
    base = global_model()
    drawn = set()
    for rnd in range(1, 9):
        result, grid = run(base, {n: reply(n, base, server_round=rnd) for n in NODES[:3]}, server_round=rnd)
        assert result.model is not None
        assert set(grid.asked["query.decrypt"]) <= set(NODES[:3])
        drawn.add(tuple(sorted(grid.asked["query.decrypt"])))
    assert len(drawn) > 1


@pytest.mark.parametrize("damage, code", [("bit-flip", "payload-mismatch"), ("truncated", "corrupt-ciphertext"),
                                          ("wrong-length", "wrong-shape"), ("no-payload", "wrong-mode"),
                                          ("bad-count", "bad-example-count")])
def test_a_damaged_update_is_rejected_and_the_round_goes_on(damage: str, code: str) -> None:
    base = global_model()
    replies = {n: reply(n, base) for n in NODES[:3]}
    bad = reply(14, base)
    if damage == "bit-flip":  # in transit: the digest no longer matches
        chunks = unpack_ciphertexts(bad[CIPHERTEXTS_KEY])
        data = chunks[0]
        bad[CIPHERTEXTS_KEY] = pack_ciphertexts((data[:100] + bytes([data[100] ^ 0x10]) + data[101:], *chunks[1:]))
    elif damage == "truncated":  # by the sender, and signed: digest and signature match, SEAL refuses the bytes
        payload = EncryptedPayload.take(bad)
        bad = reply(14, base, EncryptedPayload((payload.chunks[0][:-50], *payload.chunks[1:]), payload.num_values))
    elif damage == "wrong-length":
        bad = reply(14, base, EncryptedPayload(tuple(SECRET.encrypt(np.zeros(10))), 10))
    elif damage == "no-payload":
        del bad[CIPHERTEXTS_KEY]
    else:
        bad = reply(14, base, count=0)
    replies[14] = bad
    result, _ = run(base, replies)
    assert [(r.client_id, r.reason.value) for r in result.rejections] == [("14", code)]
    assert np.abs(flatten(result.model) - fedavg(NODES[:3], base)).max() < 1e-5
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == ["11", "12", "13"]


def test_committee_disagreement_voids_the_round() -> None:
    base, first = global_model(), []

    def liar(node: int, msg: Message) -> RecordDict:  # the first member asked adds 1 to what it signs
        first.append(first[0] if first else node)
        content = honest_decryption(node, msg)
        if node == first[0]:
            values = content[SUM_KEY][SUM_KEY].numpy() + 1.0
            content = sign_decryption(RecordDict({SUM_KEY: ArrayRecord({SUM_KEY: Array(values)})}),
                                      values.tobytes(), CONFIG, context(node), 1)
        return content

    result, _ = run(base, {n: reply(n, base) for n in NODES}, decrypt=liar)
    assert result.model is None and result.metrics is not None  # the model stays as it was; the run goes on
    assert "differing by" in result.failure and result.current is base


@pytest.mark.parametrize("fault", ["crash", "silent", "unsigned", "forged", "other-round"])
def test_a_committee_member_that_drops_out_or_cheats_is_replaced(fault: str) -> None:
    base, first = global_model(), []

    def flaky(node: int, msg: Message):
        if first:
            return honest_decryption(node, msg)
        first.append(node)
        content = honest_decryption(node, msg)
        if fault == "crash":
            return Error(code=0, reason="client crashed")
        if fault == "silent":
            return None
        if fault == "unsigned":
            del content[SIGNED_KEY]
        elif fault == "forged":  # returns values other than those it signed
            content[SUM_KEY] = ArrayRecord({SUM_KEY: Array(content[SUM_KEY][SUM_KEY].numpy() + 1)})
        else:
            values = content[SUM_KEY][SUM_KEY].numpy()
            content = sign_decryption(RecordDict({SUM_KEY: ArrayRecord({SUM_KEY: Array(values)})}),
                                      values.tobytes(), CONFIG, context(node), 2)
        return content

    result, grid = run(base, {n: reply(n, base) for n in NODES}, decrypt=flaky)
    assert len(grid.asked["query.decrypt"]) == 3 and len(set(grid.asked["query.decrypt"])) == 3
    assert np.abs(flatten(result.model) - fedavg(NODES, base)).max() < 1e-5
    expected = {"crash": "client-error", "silent": "no-reply", "unsigned": "unsigned", "forged": "bad-signature",
                "other-round": "replayed"}[fault]
    assert [(r.phase, r.reason.value) for r in result.rejections] == [("decrypt", expected)]


def test_round_fails_cleanly_when_no_committee_can_be_formed() -> None:
    base = global_model()
    result, _ = run(base, {n: reply(n, base) for n in NODES}, decrypt=lambda node, msg: None)
    assert result.model is None and "committee members decrypted" in result.failure
    assert len(result.leaves) == 0 and len(result.rejections) == len(NODES)


def test_a_client_refuses_to_encrypt_a_diverged_or_oversized_update() -> None:
    base = global_model()
    nan = ArrayRecord({k: Array(np.full(a.shape, np.nan, np.float32))
                       for k, a in zip(base.keys(), base.to_numpy_ndarrays())})
    with pytest.raises(PlaintextRangeError, match="NaN"):
        encrypt_update(nan, base, 10, SECRET)
    far = ArrayRecord({k: Array(a + 100) for k, a in zip(base.keys(), base.to_numpy_ndarrays())})
    with pytest.raises(PlaintextRangeError, match="too large"):
        encrypt_update(far, base, 10, SECRET)


@pytest.mark.slow
def test_he_runs_match_plaintext_and_the_server_never_holds_key_material(
    synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ServerApp runs in this process, the ClientApps in Ray workers: under the threshold scheme (the default)
    a key share drawn here, and under shared-key a secret context created here, fails the test."""
    import privacy.keygen
    from fedproof.simulation import simulate
    from privacy.threshold import SecretShare

    def refuse(*args, **kwargs):
        raise AssertionError("secret key material was created in the server process")

    monkeypatch.setattr(SecretContext, "__init__", refuse)
    monkeypatch.setattr(SecretShare, "generate", refuse)
    monkeypatch.setattr(privacy.keygen, "hello", refuse)
    common = dict(clients=3, rounds=2, data_dir=str(synthetic_dir), run_dir=str(tmp_path), dp=False, ledger=False)
    threshold = simulate(RunConfig(**common, run_id="threshold", he=True), num_cpus=2)
    shared = simulate(RunConfig(**common, run_id="shared", he=True, he_scheme="shared-key"), num_cpus=2)
    plain = simulate(RunConfig(**common, run_id="plain", he=False), num_cpus=2)
    for t, s, b in zip(threshold.rounds, shared.rounds, plain.rounds):
        assert abs(t.accuracy - b.accuracy) <= 0.003 and abs(s.accuracy - b.accuracy) <= 0.003
        assert t.rejected_updates == s.rejected_updates == 0 and not t.failed and not s.failed
        assert t.upload_bytes_per_param is not None and t.upload_bytes_per_param <= 16
        assert s.upload_bytes_per_param is not None and s.upload_bytes_per_param <= 12
        assert b.upload_bytes_per_param == pytest.approx(4.0, rel=0.01)  # float32 plus .npy headers
    keys = Path(json.loads((tmp_path / "threshold" / "run.json").read_text())["config"]["key-set"])
    assert keys.parent == tmp_path / "threshold" and not list(keys.glob("*.ctx"))  # signing keys only
