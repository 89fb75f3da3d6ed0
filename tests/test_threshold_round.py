"""Threshold HE in the round, with the real client code on a fake grid: the key ceremony, FedAvg through t
decryptors, dropouts, and a malicious server's requests, each refused with its reason."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fakegrid import FakeGrid
from pins import device_pin
from fedproof.core.config import RunConfig
from fedproof.base.errors import UpdateRejected
from fedproof.core.keys import init_key_set
from fedproof.core.protocol import (
    CONFIG_KEY,
    REFUSED,
    ClientReport,
    DecryptionRequest,
    EncryptedPayload,
    RevealRequest,
    SignedEnvelope,
    round_settings,
)
from fedproof.core.weights import hash_model, flatten
from fl_client import threshold
from fl_client.signing import sign_update
from fl_server.admission import Admission
from fl_server.decryptors import ThresholdCommittee
from fl_server.keygen import KeyCeremonyFailed, run_ceremony
from fl_server.round import RoundPlan, RoundResult, run_round
from ledger.verification import AllowList, Domain, UpdateVerifier
from privacy.keygen import CeremonyError
from privacy.threshold import sum_ciphertexts, sum_digest

pytestmark = pytest.mark.usefixtures("virtual_exchange_clock")  # a silent node's timeout passes at once

NODES = [21, 22, 23, 24, 25]
COUNTS = {21: 300, 22: 500, 23: 50, 24: 1000, 25: 150}
SCALE = 4000
KEYS = init_key_set(Path(tempfile.mkdtemp(prefix="fedproof-mhe-keys-")), [str(n) for n in NODES])
CONFIG = RunConfig(run_id="mhe-run", chain_id=31337, ledger_contract="0x" + "cd" * 20, key_set=str(KEYS.directory),
                   he_weight_scale=SCALE)
DOMAIN = CONFIG.domain()
PIN = device_pin(CONFIG)  # each device's trust.json


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


def global_model() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"w": Array(rng.normal(size=(20, 300)).astype(np.float32)),
                        "b": Array(rng.normal(size=(2500,)).astype(np.float32))})


def delta(node: int) -> np.ndarray:
    return np.random.default_rng(node).uniform(-0.5, 0.5, flatten(global_model()).size)


class Devices:
    """Each node's ClientApp state (its Context), answering through fl_client.threshold as a device would."""

    def __init__(self, nodes=NODES) -> None:
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"client-id": str(n), "ledger-trust": PIN},
                                    state=RecordDict(),
                                    run_config={}) for n in nodes}
        self.absent: set[int] = set()  # nodes that stopped answering decryption requests
        self.no_cosign: set[int] = set()  # nodes that decrypt but then do not co-sign

    def handlers(self) -> dict:
        ctx = self.contexts
        return {
            "query_keygen_hello": lambda node, msg: threshold.keygen_hello(CONFIG, ctx[node]),
            "query_keygen_commit": lambda node, msg: threshold.keygen_commit(msg.content, CONFIG, ctx[node]),
            "query_keygen_reveal": lambda node, msg: threshold.keygen_reveal(msg.content, CONFIG, ctx[node]),
            "query_keygen_finish": lambda node, msg: threshold.keygen_finish(msg.content, CONFIG, ctx[node]),
            "query_keygen_confirm": lambda node, msg: threshold.keygen_confirm(msg.content, CONFIG, ctx[node]),
            "query_reveal_update": self.reveal,
            "query_decrypt_share": self.decrypt,
            "query_cosign_model": self.cosign,
            "train": self.train,
        }

    def decrypt(self, node: int, msg: Message):
        if node in self.absent:
            return None
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        return threshold.decrypt_share(msg.content, CONFIG, server_round, self.contexts[node], CONFIG.min_contributors)

    def cosign(self, node: int, msg: Message):
        if node in self.absent | self.no_cosign:
            return None
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        return threshold.cosign_model(msg.content, CONFIG, server_round, self.contexts[node], CONFIG.min_contributors)

    def reveal(self, node: int, msg: Message):
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        return threshold.reveal_update(msg.content, CONFIG, server_round, self.contexts[node], CONFIG.min_contributors)

    def train(self, node: int, msg: Message, withhold: bool = True) -> RecordDict:
        """A device's train reply: its signed commitment (``withhold``), or with the ciphertexts still in it."""
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        payload = threshold.encrypt_update(delta(node), COUNTS[node], self.contexts[node])
        content = payload.put(RecordDict({"client": ClientReport(str(node)).to_record()}))
        content["metrics"] = MetricRecord({"num-examples": COUNTS[node]})
        sign_update(content, CONFIG, self.contexts[node], server_round, COUNTS[node], None,
                    hash_model(msg.content["arrays"], CONFIG.run_id))
        return threshold.withhold(content, server_round, self.contexts[node]) if withhold else content


def ceremony(devices: Devices, nodes=NODES, threshold_=0):
    grid = FakeGrid(nodes, **devices.handlers())
    return run_ceremony(grid, CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, threshold_, 5, SCALE), grid


@pytest.fixture(scope="module")
def keyed():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    devices = Devices()
    key, _ = ceremony(devices)
    return devices, key


def run(devices: Devices, key, trainers=NODES, server_round: int = 1) -> tuple[RoundResult, FakeGrid]:
    allow = AllowList.load(KEYS.allowlist)
    plan = RoundPlan(
        settings=CONFIG.client_record(), fraction_train=1.0, fraction_evaluate=0.0, seed=3, timeout=5,
        admission=Admission(UpdateVerifier(allow, DOMAIN)),
        evaluate=lambda arrays: (0.0, 0.0), max_abs_delta=4.0,
        threshold=ThresholdCommittee(key, 3, 5, allow, DOMAIN),
    )
    handlers = devices.handlers()
    train = handlers.pop("train")
    grid = FakeGrid(NODES, train=lambda node, msg: train(node, msg) if node in trainers else None, **handlers)
    return run_round(grid, plan, server_round, global_model()), grid


def fedavg(nodes) -> np.ndarray:
    total = sum(COUNTS[n] for n in nodes)
    return flatten(global_model()) + sum(COUNTS[n] * delta(n) for n in nodes) / total


def test_the_ceremony_gives_every_party_its_own_share_of_one_key(keyed) -> None:
    devices, key = keyed
    assert key.threshold == 3 and sorted(key.nodes) == sorted(str(n) for n in NODES)
    holdings = [threshold.key_holding(devices.contexts[n]) for n in NODES]
    assert len({h.public_key.digest for h in holdings}) == 1 and holdings[0].public_key.digest == key.digest
    assert len({h.share.tobytes() for h in holdings}) == len(NODES)  # no two parties hold the same share
    assert all(threshold.CeremonyState.recall(devices.contexts[n]) is None for n in NODES)  # s_i is gone


def test_threshold_fedavg_equals_plaintext_fedavg(keyed) -> None:
    devices, key = keyed
    result, grid = run(devices, key, server_round=1)
    assert result.failure == "" and len(result.admitted) == len(NODES)
    assert np.abs(flatten(result.model) - fedavg(NODES)).max() < 1e-4
    assert len(grid.asked["query.decrypt_share"]) == key.threshold  # t partials, not n


def test_up_to_n_minus_t_holders_may_drop_between_upload_and_decryption(keyed) -> None:
    devices, key = keyed
    devices.absent = {NODES[0], NODES[3]}  # n - t = 2 gone after sending their updates
    try:
        result, _ = run(devices, key, server_round=2)
    finally:
        devices.absent = set()
    assert result.failure == "", result.failure
    assert np.abs(flatten(result.model) - fedavg(NODES)).max() < 1e-4


def test_too_few_contributors_voids_the_round_and_keeps_the_model(keyed) -> None:
    devices, key = keyed
    result, grid = run(devices, key, trainers=NODES[:2], server_round=3)
    assert result.model is None and "no update could be aggregated" in result.failure
    # the contributors themselves refuse to reveal to a set smaller than their floor: nothing reaches a decryptor
    assert {r.reason.value for r in result.rejected("reveal")} == {"refused"} and len(result.rejected("reveal")) == 2
    assert all("too-few-contributors" in r.detail for r in result.rejected("reveal"))
    assert "query.decrypt_share" not in grid.asked
    assert result.current is result.parent


class MaliciousServer:
    """Crafts decryption requests from genuine signed updates of a round, as a server that wants more than the sum:
    every node commits, the server freezes the set of all commitments, and every node reveals to it."""

    def __init__(self, devices: Devices, server_round: int) -> None:
        self.devices, self.round = devices, server_round
        self.commitments = {}
        for node in NODES:
            msg = Message(RecordDict({CONFIG_KEY: round_settings(CONFIG.client_record(), server_round),
                                      "arrays": global_model()}), dst_node_id=node, message_type="train", group_id="x")
            self.commitments[node] = SignedEnvelope.take(devices.train(node, msg))
        self.committed = tuple(self.commitments[n] for n in NODES)
        self.revealed = {n: self.reveal(n, self.committed) for n in NODES}

    def settings(self) -> RecordDict:
        return RecordDict({CONFIG_KEY: round_settings(CONFIG.client_record(), self.round)})

    def reveal(self, node: int, committed) -> RecordDict:
        return threshold.reveal_update(RevealRequest(tuple(committed)).put(self.settings()), CONFIG, self.round,
                                       self.devices.contexts[node], 3)

    def leaf(self, node):
        return self.commitments[node], EncryptedPayload.take(self.revealed[node]).chunks

    def request(self, leaves, decryptors, digest=None, committed=None) -> DecryptionRequest:
        if digest is None:
            digest = sum_digest(sum_ciphertexts(threshold.PARAMS, [chunks for _, chunks in leaves]))
        by_client = {str(n): SignedEnvelope.take(self.revealed[n]) for n in NODES}
        reveals = tuple(by_client.get(e.fields.client_id, e) for e, _ in leaves)
        return DecryptionRequest(tuple(decryptors), digest, tuple(leaves), reveals,
                                 self.committed if committed is None else tuple(committed))

    def ask(self, holder: int, leaves, decryptors=None, digest=None, committed=None, min_contributors=3) -> str:
        decryptors = decryptors or tuple(sorted([str(holder), str(NODES[1]), str(NODES[2])]))
        content = self.request(leaves, decryptors, digest, committed).put(self.settings())
        reply = threshold.decrypt_share(content, CONFIG, self.round, self.devices.contexts[holder], min_contributors)
        report = ClientReport.from_reply(reply)
        return report.reason if report is not None and report.status == REFUSED else "decrypted"


def test_a_malicious_server_gets_only_refusals_with_reasons(keyed) -> None:
    devices, _ = keyed
    evil = MaliciousServer(devices, server_round=10)
    holder = NODES[0]
    one, two, three = (evil.leaf(n) for n in NODES[1:4])
    # one victim's ciphertext wrapped as a "sum"; a sum of fewer than min-contributors
    assert evil.ask(holder, [one]).startswith("too-few-contributors")
    assert evil.ask(holder, [one, two]).startswith("too-few-contributors")
    # the same client twice to reach the count
    assert evil.ask(holder, [one, one, two]).startswith("too-few-contributors")
    # asked to decrypt a sum that is not the sum of the signed leaves
    assert evil.ask(holder, [one, two, three], digest=sum_digest(sum_ciphertexts(threshold.PARAMS, [one[1]])))\
        .startswith("sum-mismatch")
    # a leaf whose ciphertexts are not the ones its client signed
    swapped = (one[0], two[1])
    assert evil.ask(holder, [swapped, two, three]).startswith("bad-leaf")
    # a decryptor set that is not t holders including this one
    assert evil.ask(holder, [one, two, three], decryptors=(str(NODES[1]), str(NODES[2]))).startswith("bad-decryptors")
    # the honest request is served; a second, different sum in the same round is not
    assert evil.ask(holder, [one, two, three]) == "decrypted"
    assert evil.ask(holder, [one, two, three]) == "decrypted"  # the same sum again: a new set after a dropout
    assert evil.ask(holder, [one, two, evil.leaf(NODES[4])]).startswith("second-sum")


def test_a_leaf_from_another_round_or_run_is_refused(keyed) -> None:
    devices, _ = keyed
    old, new = MaliciousServer(devices, 20), MaliciousServer(devices, 21)
    leaves = [old.leaf(NODES[1]), new.leaf(NODES[2]), new.leaf(NODES[3])]
    assert new.ask(NODES[0], leaves).startswith("bad-leaf")


def test_a_ceremony_below_a_majority_threshold_is_refused_by_server_and_devices(monkeypatch) -> None:
    with pytest.raises(KeyCeremonyFailed, match="majority"):
        ceremony(Devices(), threshold_=2)  # 2 of 5: fewer than a majority could decrypt
    import fl_server.keygen

    monkeypatch.setattr(fl_server.keygen, "check_threshold", lambda t, n: None)  # a server that asks anyway
    with pytest.raises(CeremonyError, match="majority"):
        ceremony(Devices(), threshold_=2)


def test_a_party_that_stops_half_way_is_left_out_and_the_ceremony_starts_again() -> None:
    devices = Devices()
    handlers = devices.handlers()
    handlers["query_keygen_finish"] = lambda node, msg: (
        None if node == NODES[4] else threshold.keygen_finish(msg.content, CONFIG, devices.contexts[node]))
    key = run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5, SCALE)
    assert sorted(key.nodes.values()) == NODES[:4] and key.threshold == 3  # a majority of those who stayed
    assert all(threshold.key_holding(devices.contexts[n]).public_key.digest == key.digest for n in NODES[:4])


def as_flower(handler):
    """A handler whose exceptions become error replies, as Flower's ClientApp turns them."""
    def answer(node, msg):
        try:
            return handler(node, msg)
        except Exception as exc:  # noqa: BLE001 - what Flower does with a ClientApp's exception
            return Error(code=0, reason=str(exc))
    return answer


def test_the_ceremony_fails_clearly_when_too_few_parties_stay() -> None:
    devices = Devices()
    handlers = {kind: as_flower(h) for kind, h in devices.handlers().items()}
    handlers["query_keygen_commit"] = as_flower(lambda node, msg: (  # three of five vanish after their hello
        None if node in NODES[2:] else threshold.keygen_commit(msg.content, CONFIG, devices.contexts[node])))
    with pytest.raises(KeyCeremonyFailed):
        run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5, SCALE)


def test_a_device_deals_its_secret_once_and_only_into_a_key_of_most_registered_clients() -> None:
    devices = Devices()
    handlers, captured = devices.handlers(), {}
    honest_commit = handlers["query_keygen_commit"]
    handlers["query_keygen_commit"] = lambda node, msg: captured.setdefault(node, msg) and honest_commit(node, msg)
    # a server that asks for a second deal of the same secret (to another set, it could collect enough shares)
    handlers["query_keygen_reveal"] = lambda node, msg: threshold.keygen_commit(captured[node].content, CONFIG,
                                                                                devices.contexts[node])
    with pytest.raises(UpdateRejected, match="second one for the same secret"):
        run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5,
                     SCALE)
    # a key of 2 of the 5 registered clients (a server shrinking the federation to an accomplice and a victim)
    request = captured[NODES[0]].content
    small = RecordDict({"ceremony": ConfigRecord({"threshold": 2, "parties": 2, "weight-scale": SCALE,
                                                  "first-round": 1, "colluders": 0})})
    for key in ("hello-0000", "hello-0001"):
        small[key], small[f"{key}-signed"] = request[key], request[f"{key}-signed"]
    with pytest.raises(UpdateRejected, match="majority of the 5 registered"):
        threshold.keygen_commit(small, CONFIG, Devices().contexts[NODES[1]])


def _decrypted(devices, server_round: int):
    """Round ``server_round``'s leaves from NODES[:3], decrypted by those three: the request, the signed partials,
    and the honest model's hash."""
    from fedproof.core.protocol import SignedEnvelope
    from fedproof.core.weights import apply_mean
    from privacy.threshold import fuse

    evil = MaliciousServer(devices, server_round=server_round)
    leaves = [evil.leaf(n) for n in NODES[:3]]
    decryptors = tuple(sorted(str(n) for n in NODES[:3]))
    request = evil.request(leaves, decryptors)
    config = RecordDict({CONFIG_KEY: round_settings(CONFIG.client_record(), server_round)})
    partials = []
    for d in decryptors:
        reply = threshold.decrypt_share(request.put(RecordDict(dict(config))), CONFIG, server_round,
                                        devices.contexts[int(d)], 3)
        partials.append((SignedEnvelope.take(reply), reply.array_records["partial"]["partial"].numpy()))
    c0 = threshold.VerifiedSum.recall(devices.contexts[int(decryptors[0])]).c0  # re-randomized
    values = fuse(threshold.PARAMS, c0, [v for _, v in partials], flatten(global_model()).size)
    examples = sum(COUNTS[n] for n in NODES[:3])
    return request, partials, hash_model(apply_mean(global_model(), values * SCALE, examples), CONFIG.run_id)


def _cosign(devices, holder: int, server_round: int, request, partials, model: bytes, parent=None) -> str:
    from fedproof.core.protocol import COSIGN_KEY, CosignRequest

    config = RecordDict({CONFIG_KEY: round_settings(CONFIG.client_record(), server_round)})
    content = CosignRequest(request, tuple(partials), parent or global_model(), model).put(config)
    reply = threshold.cosign_model(content, CONFIG, server_round, devices.contexts[holder], 3)
    report = ClientReport.from_reply(reply)
    if report is not None and report.status == REFUSED:
        return report.reason
    assert reply.config_records[COSIGN_KEY]["model-sha256"] == model
    return "signed"


def test_a_key_holder_co_signs_only_the_model_it_computes_itself(keyed) -> None:
    """A malicious server's co-signing requests: another model hash, a tampered partial, another parent."""
    devices, key = keyed
    request, partials, honest = _decrypted(devices, 30)

    def ask(holder: int, partials=partials, parent=None, model=honest) -> str:
        return _cosign(devices, holder, 30, request, partials, model, parent)

    assert ask(NODES[4]) == "signed"  # any key holder, decryptor or not, recomputes the same model
    assert ask(NODES[0], model=b"\x07" * 32).startswith("model-mismatch")  # a model the server made up
    tampered = [(partials[0][0], partials[0][1] ^ np.uint64(1))] + partials[1:]
    assert ask(NODES[0], partials=tampered).startswith("bad-partial")
    other = ArrayRecord({k: Array(v + 1) for k, v in zip(global_model().keys(), global_model().to_numpy_ndarrays())})
    assert ask(NODES[0], parent=other).startswith("wrong-parent")  # not the model the leaves trained from


def test_a_decryptor_co_signs_from_the_sum_it_checked_itself_and_others_need_the_leaves(keyed) -> None:
    """A co-signing request without the leaves (the server's, to the decryptors) is served only from a sum the
    device verified when it decrypted: same round, sum and decryptor set; the same checks apply to it."""
    devices, key = keyed
    request, partials, honest = _decrypted(devices, 31)
    bare = DecryptionRequest(request.decryptors, request.sum_sha256, ())

    def ask(holder: int, request=bare, partials=partials, model=honest) -> str:
        return _cosign(devices, holder, 31, request, partials, model)

    assert ask(NODES[4]).startswith("unknown-sum")  # a key holder that never saw this sum's leaves
    assert ask(NODES[0], request=DecryptionRequest(bare.decryptors, b"\x01" * 32, ())).startswith("unknown-sum")
    assert ask(NODES[0], model=b"\x07" * 32).startswith("model-mismatch")
    tampered = [(partials[0][0], partials[0][1] ^ np.uint64(1))] + partials[1:]
    assert ask(NODES[1], partials=tampered).startswith("bad-partial")
    assert ask(NODES[0]) == "signed" and ask(NODES[1]) == "signed"
    assert ask(NODES[0]).startswith("unknown-sum")  # what it kept for co-signing is dropped once it signed
    assert ask(NODES[4], request=request) == "signed"  # with the leaves, any key holder


def test_a_decryptor_that_does_not_co_sign_is_replaced_by_another_key_holder(keyed) -> None:
    import random

    devices, key = keyed
    live = sorted(key.nodes)
    random.Random("decryptors/3/41").shuffle(live)  # as ThresholdCommittee draws round 41's decryptors (seed 3)
    dropped = live[0]
    devices.no_cosign = {int(dropped)}  # it decrypts, then goes silent
    try:
        result, grid = run(devices, key, server_round=41)
    finally:
        devices.no_cosign = set()
    signers = {c.client_id for c in result.endorsement.cosignatures}
    assert result.model is not None and len(signers) == key.threshold and dropped not in signers
    assert any(r.phase == "cosign" for r in result.rejections)  # the silent one is on the record


DAMAGES = ["bit-flip", "truncated", "wrong-length", "no-payload", "bad-count", "not-committed", "sent-early",
           "reveal-tag"]


@pytest.mark.parametrize("damage, code", [("bit-flip", "payload-mismatch"), ("truncated", "corrupt-ciphertext"),
                                          ("wrong-length", "wrong-shape"), ("no-payload", "wrong-mode"),
                                          ("bad-count", "bad-example-count"), ("not-committed", "payload-mismatch"),
                                          ("sent-early", "wrong-mode"), ("reveal-tag", "bad-signature")])
def test_a_damaged_update_is_rejected_alone_and_the_round_goes_on(keyed, damage: str, code: str) -> None:
    from fedproof.core.protocol import CIPHERTEXTS_KEY, pack_ciphertexts, unpack_ciphertexts

    devices, key = keyed
    bad, server_round = NODES[4], 50 + DAMAGES.index(damage)
    context = devices.contexts[bad]
    honest_train, honest_reveal = devices.train, devices.reveal

    def signed(msg: Message, payload: EncryptedPayload, count: int, withhold: bool = True) -> RecordDict:
        """What the sender itself signs and commits to (its signature is valid; the payload is what is wrong)."""
        content = payload.put(RecordDict({"client": ClientReport(str(bad)).to_record()}))
        content["metrics"] = MetricRecord({"num-examples": count})
        sign_update(content, CONFIG, context, server_round, count, None, hash_model(msg.content["arrays"], CONFIG.run_id))
        return threshold.withhold(content, server_round, context) if withhold else content

    def train(node: int, msg: Message) -> RecordDict:
        if node != bad:
            return honest_train(node, msg)
        payload = threshold.encrypt_update(delta(node), COUNTS[node], context)
        if damage == "truncated":  # by the sender, and signed: only the sum's parser refuses the bytes
            return signed(msg, EncryptedPayload((payload.chunks[0][:-50], *payload.chunks[1:]), payload.num_values),
                          COUNTS[node])
        if damage == "wrong-length":
            return signed(msg, threshold.encrypt_update(np.zeros(10), COUNTS[node], context), COUNTS[node])
        if damage == "bad-count":
            return signed(msg, payload, 0)
        if damage == "sent-early":  # the ciphertexts in the train reply, before the set is frozen
            return signed(msg, payload, COUNTS[node], withhold=False)
        return signed(msg, payload, COUNTS[node])

    def reveal(node: int, msg: Message):
        reply = honest_reveal(node, msg)
        if node != bad:
            return reply
        if damage == "bit-flip":  # in transit: the digest no longer matches
            chunks = unpack_ciphertexts(reply[CIPHERTEXTS_KEY])
            flipped = chunks[0][:100] + bytes([chunks[0][100] ^ 0x10]) + chunks[0][101:]
            reply[CIPHERTEXTS_KEY] = pack_ciphertexts((flipped, *chunks[1:]))
        elif damage == "no-payload":
            del reply[CIPHERTEXTS_KEY]
        elif damage == "reveal-tag":  # its commitment's signature where the reveal's belongs (another tag)
            from fedproof.core.protocol import SignedEnvelope as Envelope

            committed = RevealRequest.take(msg.content).committed
            [own] = [e for e in committed if e.fields.client_id == str(bad)]
            Envelope(own.fields, own.signature).put(reply)
        elif damage == "not-committed":  # valid ciphertexts, and a valid header, but not the committed ones
            EncryptedPayload(tuple(threshold.encrypt_update(delta(1), 7, context).chunks),
                             flatten(global_model()).size).put(reply)
        return reply

    devices.train, devices.reveal = train, reveal  # the handlers read them from the instance
    try:
        result, _ = run(devices, key, server_round=server_round)
    finally:
        del devices.train, devices.reveal
    assert [(r.client_id, r.reason.value) for r in result.rejections] == [(str(bad), code)]
    assert result.failure == "" and np.abs(flatten(result.model) - fedavg(NODES[:4])).max() < 1e-4
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == [str(n) for n in NODES[:4]]
