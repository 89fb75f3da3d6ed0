"""The outside review's attacks on threshold HE, replayed: a server with up to t - 1 accomplice clients that sign
whatever it asks, driving fedproof's own client code. Each attack must fail; where a mechanism is what stops it,
the same attack is also run with that mechanism switched off in the test, so the test can fail.

Federation: 5 registered clients (NODES), a 3-of-5 key; the accomplices are NODES[3] and NODES[4] (t - 1 = 2).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fakegrid import FakeGrid
from fedproof.base.errors import UpdateRejected
from fedproof.core.protocol import (
    CONFIG_KEY,
    REFUSED,
    DecryptionRequest,
    reveal_chunks as reveal_chunks_of_set,
    ClientReport,
    EncryptedPayload,
    RevealRequest,
    SignedEnvelope,
    round_settings,
)
from fedproof.core.weights import apply_mean, flatten, hash_model
from fl_client import threshold
from fl_client.signing import sign_statement, sign_update
from fl_server.keygen import KeyCeremonyFailed, run_ceremony
from ledger.merkle import MerkleTree
from ledger.signing import KEYGEN_TAG, REVEAL_TAG, leaf_bytes
from privacy.policy import PrivacyPolicy
from privacy import keygen
from privacy.keygen import Complaint, PartySecrets, SecretShare, commitment_chunks, deal, reveal_chunks, sealed_hashes
from privacy.ring import U64, addmod, from_signed, mulmod, submod, to_signed
from privacy.threshold import (
    encryption_of_zero,
    fuse,
    lagrange,
    pack_ciphertext,
    public_key_share,
    ring,
    rerandomizer_seed,
    sum_ciphertexts,
    sum_digest,
)
from test_threshold_round import (
    CONFIG,
    COUNTS,
    DOMAIN,
    KEYS,
    NODES,
    SCALE,
    Devices,
    MaliciousServer,
    _task_identity,  # noqa: F401 - the module's fixtures, shared
    keyed,  # noqa: F401
    _decrypted,
    global_model,
)
from ledger.verification import AllowList

pytestmark = pytest.mark.usefixtures("virtual_exchange_clock")
PARAMS = threshold.PARAMS
VICTIM, ACCOMPLICES = NODES[0], (NODES[3], NODES[4])


def settings(server_round: int) -> RecordDict:
    return RecordDict({CONFIG_KEY: round_settings(CONFIG.client_record(), server_round)})


def signed_commitment(devices: Devices, node: int, server_round: int, polys: np.ndarray, count: int = 1
                      ) -> SignedEnvelope:
    """An accomplice's train reply for ciphertexts the server crafted: signed and committed with the client code."""
    chunks = tuple(pack_ciphertext(PARAMS, p.ravel()) for p in polys)
    content = EncryptedPayload(chunks, len(chunks) * PARAMS.n).put(
        RecordDict({"client": ClientReport(str(node)).to_record()}))
    content["metrics"] = MetricRecord({"num-examples": count})
    context = devices.contexts[node]
    sign_update(content, CONFIG, context, server_round, count, None, hash_model(global_model(), CONFIG.run_id))
    return SignedEnvelope.take(threshold.withhold(content, server_round, context))


def reveal(devices: Devices, node: int, server_round: int, committed, floor: int = 3) -> RecordDict:
    return threshold.reveal_update(RevealRequest(tuple(committed)).put(settings(server_round)), CONFIG, server_round,
                                   devices.contexts[node], floor)


def accomplice_reveal(devices: Devices, node: int, server_round: int, committed, polys: np.ndarray) -> RecordDict:
    """An accomplice reveals whatever it is told to, to whatever set (its own policy is not in the way)."""
    allow = AllowList.load(KEYS.allowlist)
    root = MerkleTree([leaf_bytes(e.fields, allow.keys[e.fields.client_id], e.signature) for e in committed]).root
    chunks = tuple(pack_ciphertext(PARAMS, p.ravel()) for p in polys)
    content = EncryptedPayload(chunks, len(chunks) * PARAMS.n).put(RecordDict())
    return sign_statement(content, reveal_chunks_of_set(root), REVEAL_TAG, server_round, CONFIG,
                          devices.contexts[node])


@pytest.fixture
def lax_victim(tmp_path, keyed):
    """The victim's policy accepts sums of 2 contributors: the coalition (t - 1 = 2) can fill a sum alone."""
    devices, _ = keyed
    path = tmp_path / "policy.json"
    path.write_text(PrivacyPolicy(min_contributors=2).to_json())
    config = devices.contexts[VICTIM].node_config
    config["privacy-policy"] = str(path)
    yield
    del config["privacy-policy"]


def refusal(reply: RecordDict) -> str:
    report = ClientReport.from_reply(reply)
    return report.reason if report is not None and report.status == REFUSED else "served"


# ----------------------------------------------------------------------------------------- 1. chosen c1

MULTIPLIERS = (1, 2**17, 2**34, 2**51)
"""A chosen c1 per ciphertext: with flooding of ~2^37, each reveals 17 more bits of the decryptor's share."""


def coalition_sum_partial(devices: Devices, server_round: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The accomplices' leaves alone make a sum whose c1 is the constant c_j in ciphertext j; the victim is asked
    to decrypt it with the accomplices as co-decryptors. Returns (the victim's partial, the sum, decryptors)."""
    q = PARAMS.q
    crafted = np.zeros((len(MULTIPLIERS), 2, PARAMS.n), dtype=U64)
    for j, c in enumerate(MULTIPLIERS):
        crafted[j, 1] = c % q  # a constant polynomial is the same value in every NTT slot
    polys = (crafted, np.zeros_like(crafted))
    committed = tuple(signed_commitment(devices, n, server_round, p) for n, p in zip(ACCOMPLICES, polys))
    revealed = [accomplice_reveal(devices, n, server_round, committed, p) for n, p in zip(ACCOMPLICES, polys)]
    leaves = tuple((e, EncryptedPayload.take(r).chunks) for e, r in zip(committed, revealed))
    total = sum_ciphertexts(PARAMS, [chunks for _, chunks in leaves])
    decryptors = tuple(sorted(str(n) for n in (VICTIM, *ACCOMPLICES)))
    request = DecryptionRequest(decryptors, sum_digest(total), leaves,
                                tuple(SignedEnvelope.take(r) for r in revealed), committed)
    reply = threshold.decrypt_share(request.put(settings(server_round)), CONFIG, server_round,
                                    devices.contexts[VICTIM], 2)  # a floor the coalition alone can meet
    assert refusal(reply) == "served"
    return reply.array_records["partial"]["partial"].numpy(), total, decryptors


def recover_share(partial: np.ndarray) -> np.ndarray:
    """The review's recovery: in coefficient form h_j = c_j X + e_j; refine X chunk by chunk."""
    q, r = PARAMS.q, ring(PARAMS.n, PARAMS.q)
    h = [r.intt(row) for row in partial]
    estimate = h[0]
    for c, hj in zip(MULTIPLIERS[1:], h[1:]):
        residual = to_signed(submod(hj, mulmod(estimate, c, q), q), q)  # c * (X - estimate) + e, below q/2
        estimate = addmod(estimate, from_signed(np.rint(residual / c).astype(np.int64), q), q)
    return estimate


def victim_share(devices: Devices, decryptors: tuple[str, ...]) -> np.ndarray:
    """What the attack is after: lambda * tsk of the victim, in coefficient form (read off the device by the test)."""
    holding = threshold.key_holding(devices.contexts[VICTIM])
    points = [holding.points[d] for d in decryptors]
    weighted = mulmod(holding.share, lagrange(points, holding.x, PARAMS.q), PARAMS.q)
    return ring(PARAMS.n, PARAMS.q).intt(weighted)


def test_a_coalition_chosen_c1_recovers_a_key_share_only_without_re_randomization(keyed, lax_victim,
                                                                                  monkeypatch) -> None:
    devices, key = keyed
    # without re-randomization (switched off here, through no message), one round gives the share exactly
    with monkeypatch.context() as m:
        m.setattr(threshold.checks, "rerandomize", lambda public_key, total, seed: total)
        partial, _, decryptors = coalition_sum_partial(devices, 60)
        truth = victim_share(devices, decryptors)
        assert np.mean(recover_share(partial) == truth) == 1.0
    # with it, the same attack over several rounds recovers nothing, nor does dividing by the (public) c1'
    q, r = PARAMS.q, ring(PARAMS.n, PARAMS.q)
    for server_round in (61, 62, 63):
        partial, total, decryptors = coalition_sum_partial(devices, server_round)
        truth = victim_share(devices, decryptors)
        assert np.mean(recover_share(partial) == truth) < 0.01
        seed = rerandomizer_seed(key.statement.sha256, server_round, sum_digest(total),
                                 threshold_root(devices, server_round), decryptors)
        c1 = addmod(total[:, 1], encryption_of_zero(key.public_key, seed, total.shape[0])[:, 1], q)
        inverse = np.array([[pow(int(v), q - 2, q) for v in row] for row in c1[:1]], dtype=U64)
        divided = r.intt(mulmod(partial[0], inverse[0], q))  # X + e / c1': the noise is now uniform
        assert np.mean(divided == truth) < 0.01


def threshold_root(devices: Devices, server_round: int) -> bytes:
    """The Merkle root the victim decrypted over (kept with its verified sum)."""
    return threshold.VerifiedSum.recall(devices.contexts[VICTIM]).merkle_root


# ----------------------------------------------------------------------------------------- 2. rogue key


def ceremony_handlers(devices: Devices, captured: dict) -> dict:
    """Honest handlers that also keep every message and reply, by (step, node)."""
    handlers = devices.handlers()

    def keep(kind, handler):
        def answer(node, msg):
            reply = handler(node, msg)
            captured[(kind, node)] = (msg, reply)
            return reply
        return answer

    return {kind: keep(kind, h) if kind.startswith("query_keygen") else h for kind, h in handlers.items()}


def rogue_reveal(devices: Devices, captured: dict, msg: Message) -> RecordDict:
    """The last dealer, having seen every honest public-key share, reveals p0 = -sum(honest p0) + (-a s' + e'),
    with Shamir shares of its chosen s': the joint secret would be s', known to the server."""
    accomplice = str(ACCOMPLICES[1])
    honest = [captured[("query_keygen_reveal", n)][1].array_records["deal"]["public-share"].numpy()
              for n in NODES if n != ACCOMPLICES[1]]
    hello_msg = captured[("query_keygen_commit", ACCOMPLICES[1])][0]
    ceremony = threshold._Ceremony.take(hello_msg.content)
    hellos, _ = threshold._verified_hellos(hello_msg.content, CONFIG, devices.contexts[ACCOMPLICES[1]], ceremony)
    seed, crp = keygen.ceremony_crp(PARAMS, hellos)
    chosen = SecretShare.generate(PARAMS)
    rogue = public_key_share(PARAMS, chosen, crp)
    for share in honest:
        rogue = np.stack([submod(rogue[i], share[i], p) for i, p in enumerate(PARAMS.primes)])
    stored = threshold.CeremonyState.recall(devices.contexts[ACCOMPLICES[1]])
    secrets = PartySecrets(chosen, PartySecrets.from_bytes(stored.secrets, PARAMS).exchange_private)
    dealt = deal(PARAMS, accomplice, secrets, hellos, 3)
    threshold.keygen_reveal(msg.content, CONFIG, devices.contexts[ACCOMPLICES[1]])  # its device learns the set
    set_digest = threshold.CeremonyState.recall(devices.contexts[ACCOMPLICES[1]]).commitment_set
    content = RecordDict({"deal": ArrayRecord({"public-share": Array(rogue)}),
                          "sealed": ConfigRecord({"recipients": sorted(dealt.sealed),
                                                  "shares": [dealt.sealed[r] for r in sorted(dealt.sealed)]})})
    return sign_statement(content, reveal_chunks(accomplice, rogue, sealed_hashes(dealt.sealed), set_digest),
                          KEYGEN_TAG, 3, CONFIG, devices.contexts[ACCOMPLICES[1]])


def with_a_late_rogue_dealer() -> tuple[Devices, dict, dict]:
    """Devices whose last dealer (an accomplice) reveals a rogue deal made from the honest ones."""
    devices, captured = Devices(), {}
    handlers = ceremony_handlers(devices, captured)
    honest_reveal = handlers["query_keygen_reveal"]
    handlers["query_keygen_reveal"] = lambda node, msg: (
        rogue_reveal(devices, captured, msg) if node == ACCOMPLICES[1] else honest_reveal(node, msg))
    return devices, captured, handlers


def test_a_late_dealer_cannot_choose_the_key(monkeypatch) -> None:
    allow = AllowList.load(KEYS.allowlist)
    # an honest server sees the rogue deal does not open its commitment: the dealer is excluded, not its victims
    _, _, handlers = with_a_late_rogue_dealer()
    key = run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), allow, DOMAIN, 0, 5, SCALE)
    assert sorted(key.nodes) == sorted(str(n) for n in NODES if n != ACCOMPLICES[1])
    # a server that relays it anyway: every honest holder refuses to finish with it
    import fl_server.keygen as server_keygen

    _, captured, handlers = with_a_late_rogue_dealer()
    monkeypatch.setattr(server_keygen, "deal_commitment", lambda party, public, hashes: captured[
        ("query_keygen_commit", int(party))][1].config_records["commitment"]["commitment"])
    with pytest.raises(UpdateRejected, match="not the one it committed to"):
        run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), allow, DOMAIN, 0, 5, SCALE)


def test_a_party_reveals_its_deal_to_one_commitment_set_only() -> None:
    """A server that, after the reveals, swaps the accomplice's commitment for one to a rogue deal and asks the
    honest parties to reveal again, to that set: they refuse."""
    devices, captured = Devices(), {}
    handlers = ceremony_handlers(devices, captured)
    handlers["query_keygen_finish"] = lambda node, msg: None  # the server stops once it has every deal
    with pytest.raises(KeyCeremonyFailed):
        run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5,
                     SCALE)
    msg, _ = captured[("query_keygen_reveal", VICTIM)]
    i = NODES.index(ACCOMPLICES[1])
    swapped = RecordDict(dict(msg.content))
    swapped[f"commit-{i:04d}"] = ConfigRecord({"party": str(ACCOMPLICES[1]), "commitment": bytes(32)})
    sign_statement(swapped, commitment_chunks(str(ACCOMPLICES[1]), bytes(32)), KEYGEN_TAG, 2, CONFIG,
                   devices.contexts[ACCOMPLICES[1]], key=f"commit-{i:04d}-signed")
    with pytest.raises(UpdateRejected, match="another commitment set"):
        threshold.keygen_reveal(swapped, CONFIG, devices.contexts[VICTIM])
    threshold.keygen_reveal(msg.content, CONFIG, devices.contexts[VICTIM])  # the same set again: served


# ----------------------------------------------------------------------------------------- 3. one victim


def test_an_accomplice_cannot_cancel_the_others_leaves_after_seeing_them(keyed) -> None:
    """The review's third attack: a leaf Enc(0) - (sum of the other leaves), so the sum is the victim's update.
    The accomplice can only make it after the others revealed, and then it is not in the frozen set."""
    devices, key = keyed
    server_round = 70
    evil = MaliciousServer(devices, server_round)  # every node committed, then revealed to the frozen set
    others = [evil.leaf(n) for n in NODES if n not in (VICTIM, ACCOMPLICES[1])]
    cancel = sum_ciphertexts(PARAMS, [chunks for _, chunks in others])
    zero = sum_ciphertexts(PARAMS, [key.public_key.encrypt(np.zeros(flatten(global_model()).size))])
    crafted = submod(zero, cancel, PARAMS.q)
    late = signed_commitment(devices, ACCOMPLICES[1], server_round, crafted, COUNTS[ACCOMPLICES[1]])
    late_reveal = accomplice_reveal(devices, ACCOMPLICES[1], server_round, (*evil.committed[:-1], late), crafted)
    leaves = [evil.leaf(VICTIM), *others, (late, EncryptedPayload.take(late_reveal).chunks)]
    # the decryptors check every leaf against the frozen set the honest parties revealed to
    assert evil.ask(VICTIM, leaves).startswith("not-committed")
    # a new frozen set holding the late leaf: the honest contributors already revealed to another set
    new_set = (*evil.committed[:-1], late)
    assert refusal(reveal(devices, VICTIM, server_round, new_set)).startswith("second-set")
    # and their reveals to the old set do not cover the new one
    assert evil.ask(VICTIM, leaves, committed=new_set).startswith("bad-leaf")
    # the sum the attack needed would indeed have been the victim's update alone
    total = addmod(sum_ciphertexts(PARAMS, [c for _, c in leaves[:-1]]), crafted, PARAMS.q)
    assert np.array_equal(total, addmod(sum_ciphertexts(PARAMS, [evil.leaf(VICTIM)[1]]), zero, PARAMS.q))


# ----------------------------------------------------------------------------------------- 4. weight scale


def test_co_signers_take_the_weight_scale_from_the_key_statement_not_the_message(keyed) -> None:
    devices, key = keyed
    request, partials, honest = _decrypted(devices, 80)
    evil = CONFIG.with_overrides(he_weight_scale=25 * SCALE)  # what the server's co-sign message says
    c0 = threshold.VerifiedSum.recall(devices.contexts[NODES[0]]).c0
    values = fuse(PARAMS, c0, [v for _, v in partials], flatten(global_model()).size)
    examples = sum(COUNTS[n] for n in NODES[:3])
    scaled = hash_model(apply_mean(global_model(), values * 25 * SCALE, examples), CONFIG.run_id)

    def ask(holder: int, model: bytes) -> str:
        from fedproof.core.protocol import CosignRequest

        content = CosignRequest(request, tuple(partials), global_model(), model).put(
            RecordDict({CONFIG_KEY: round_settings(evil.client_record(), 80)}))
        return refusal(threshold.cosign_model(content, evil, 80, devices.contexts[holder], 3))

    assert ask(NODES[4], scaled).startswith("model-mismatch")  # parent + 25 x mean: not what it computes
    assert ask(NODES[4], honest) == "served"
    assert threshold.key_statement(devices.contexts[NODES[4]]).weight_scale == SCALE


# ----------------------------------------------------------------------------------------- 6. steering


def test_an_unopenable_share_excludes_its_dealer_not_its_recipient(monkeypatch) -> None:
    real = keygen.seal_share
    dealer, recipient = str(ACCOMPLICES[1]), str(NODES[1])

    def seal(recipient_key, sender, to, seed, share):
        sealed = real(recipient_key, sender, to, seed, share)
        return bytes(len(sealed)) if (sender, to) == (dealer, recipient) else sealed  # cannot open

    monkeypatch.setattr(keygen, "seal_share", seal)
    devices = Devices()
    grid = FakeGrid(NODES, **devices.handlers())
    key = run_ceremony(grid, CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5, SCALE)
    assert dealer not in key.nodes and recipient in key.nodes and len(key.nodes) == 4
    assert grid.asked["query.keygen_hello"].count(NODES[1]) == 2  # a second attempt, with the recipient in it


def test_a_recipient_that_lies_in_its_complaint_is_itself_excluded(monkeypatch) -> None:
    real = threshold.ceremony.finish
    liar, accused = str(NODES[2]), str(NODES[0])

    def finish(params, party, secrets, hellos, deals, t):
        if party == liar:  # its share from `accused` opens fine; it complains anyway
            return Complaint(party, accused, secrets.exchange_private)
        return real(params, party, secrets, hellos, deals, t)

    monkeypatch.setattr(threshold.ceremony, "finish", finish)
    devices = Devices()
    key = run_ceremony(FakeGrid(NODES, **devices.handlers()), CONFIG.client_record(), AllowList.load(KEYS.allowlist),
                       DOMAIN, 0, 5, SCALE)
    assert liar not in key.nodes and accused in key.nodes and len(key.nodes) == 4


def test_a_device_uses_a_key_only_once_every_holder_signed_it() -> None:
    devices = Devices()
    handlers = devices.handlers()
    handlers["query_keygen_confirm"] = lambda node, msg: RecordDict(
        {"confirmed": ConfigRecord({"key-sha256": b""})})  # a server that never relays the signatures
    with pytest.raises(Exception):
        run_ceremony(FakeGrid(NODES, **handlers), CONFIG.client_record(), AllowList.load(KEYS.allowlist), DOMAIN, 0, 5,
                     SCALE)
    with pytest.raises(Exception, match="no confirmed share"):
        threshold.encrypt_update(np.zeros(3), 1, devices.contexts[VICTIM])
    # a statement with one holder's signature missing (replaced by another's) is refused by the device
    devices, captured = Devices(), {}
    run_ceremony(FakeGrid(NODES, **ceremony_handlers(devices, captured)), CONFIG.client_record(),
                 AllowList.load(KEYS.allowlist), DOMAIN, 0, 5, SCALE)
    msg, _ = captured[("query_keygen_confirm", VICTIM)]
    record = msg.content.config_records["key-statement"]
    signatures = bytes(record["signatures"])
    forged = RecordDict({"key-statement": ConfigRecord({"statement": record["statement"],
                                                        "signatures": signatures[64:128] + signatures[64:]})})
    held = threshold.HeldKey.recall(devices.contexts[VICTIM])
    threshold.PendingKey(str(VICTIM), bytes(record["statement"]), held.p0, held.a, held.share).keep(
        devices.contexts[VICTIM])
    with pytest.raises(UpdateRejected, match="not signed by all its holders"):
        threshold.keygen_confirm(forged, CONFIG, devices.contexts[VICTIM])
