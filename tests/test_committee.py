"""A key committee drawn by sortition (ledger.committee, fl_server.committee, fl_client.threshold.draw), with the
real client code on a fake grid: the draw, the committee's ceremony, the others joining the key; and a server that
tries to choose the committee itself, each way refused by the devices."""

from __future__ import annotations

import math
import random
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fakegrid import FakeGrid
from pins import device_pin
from fedproof.base.errors import UpdateRejected
from fedproof.core.config import RunConfig
from fedproof.core.keys import init_key_set
from fedproof.core.protocol import DRAW_KEY, TRANSCRIPT_KEY
from fl_client import threshold
from fl_server import committee as server_committee
from fl_server.keygen import run_ceremony
from ledger.committee import Draw, capture_risk, committee_size, list_entry, list_tree, pick
from ledger.key_statement import KeyStatementError
from ledger.verification import AllowList
from privacy.errors import PrivacyError

pytestmark = pytest.mark.usefixtures("virtual_exchange_clock")

NODES = list(range(101, 141))  # 40 registered devices: more than a whole-federation key is made of
KEYS = init_key_set(Path(tempfile.mkdtemp(prefix="fedproof-committee-keys-")), [str(n) for n in NODES])
CONFIG = RunConfig(run_id="committee-run", chain_id=31337, ledger_contract="0x" + "ab" * 20,
                   key_set=str(KEYS.directory), he_weight_scale=40)
DOMAIN = CONFIG.domain()
PIN = device_pin(CONFIG)
ALLOW = AllowList.load(KEYS.allowlist)
SIZE = committee_size(len(NODES), math.ceil(0.1 * len(NODES)), 1e-6, 3)  # 8: t = 5 > the 4 assumed colluders


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


class Devices:
    def __init__(self) -> None:
        self.state_dir = tempfile.mkdtemp(prefix="fedproof-committee-state-")  # each device's draw count lives here
        self.contexts = {n: Context(run_id=1, node_id=n, node_config={"client-id": str(n), "ledger-trust": PIN,
                                                                      "state-dir": self.state_dir},
                                    state=RecordDict(), run_config={}) for n in NODES}

    def handlers(self) -> dict:
        ctx = self.contexts
        return {
            "query_draw_commit": lambda node, msg: threshold.draw_commit(msg.content, CONFIG, ctx[node]),
            "query_draw_reveal": lambda node, msg: threshold.draw_reveal(msg.content, CONFIG, ctx[node]),
            "query_key_join": lambda node, msg: threshold.key_join(msg.content, CONFIG, ctx[node]),
            "query_keygen_hello": lambda node, msg: threshold.keygen_hello(CONFIG, ctx[node]),
            "query_keygen_commit": lambda node, msg: threshold.keygen_commit(msg.content, CONFIG, ctx[node]),
            "query_keygen_reveal": lambda node, msg: threshold.keygen_reveal(msg.content, CONFIG, ctx[node]),
            "query_keygen_finish": lambda node, msg: threshold.keygen_finish(msg.content, CONFIG, ctx[node]),
            "query_keygen_confirm": lambda node, msg: threshold.keygen_confirm(msg.content, CONFIG, ctx[node]),
        }


def make_key(devices: Devices, grid: FakeGrid | None = None, committee: int = 0):
    return server_committee.make_key(grid or FakeGrid(NODES, **devices.handlers()), CONFIG.client_record(), ALLOW,
                                     DOMAIN, threshold=0, timeout=5, weight_scale=40, first_round=1,
                                     committee=committee, colluding_share=0.1, registered=len(NODES))


# ------------------------------------------------------------------------------------------- the numbers


def test_capture_risk_is_the_hypergeometric_tail() -> None:
    """Against a count of every committee of 5 out of 12 candidates, 4 of whom collude, holding 3 or more."""
    people = range(12)
    bad = set(range(4))
    committees = list(combinations(people, 5))
    captured = sum(len(bad & set(c)) >= 3 for c in committees)
    assert capture_risk(12, 4, 5, 3) == pytest.approx(captured / len(committees))
    assert capture_risk(1000, 4, 9, 5) == 0.0  # fewer colluders than t: no committee is captured
    assert capture_risk(10, 10, 5, 3) == 1.0


def test_a_fleets_committee_is_a_few_dozen_and_grows_with_the_assumed_colluders() -> None:
    sizes = [committee_size(1000, a, 1e-6, 3) for a in (10, 100, 200)]
    assert sizes[0] <= 21 and sizes == sorted(sizes) and sizes[1] < 40
    assert committee_size(10_000, 1000, 1e-6, 3) == committee_size(1000, 100, 1e-6, 3)  # the share is what counts


def test_the_committee_is_a_uniform_draw_from_the_candidates() -> None:
    """Over many seeds every candidate is picked about size/candidates of the time."""
    candidates = tuple(f"c{i}" for i in range(20))
    counts = dict.fromkeys(candidates, 0)
    for i in range(2000):
        for c in pick(random.Random(i).randbytes(32), candidates, 5):
            counts[c] += 1
    assert all(abs(n / 2000 - 0.25) < 0.05 for n in counts.values()), counts


# ------------------------------------------------------------------------------------------- the protocol


@pytest.fixture(scope="module")
def drawn():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    devices = Devices()
    grid = FakeGrid(NODES, **devices.handlers())
    key = make_key(devices, grid)
    return devices, key, grid


def test_a_committee_drawn_by_every_device_holds_the_key_and_every_other_device_encrypts_under_it(drawn) -> None:
    devices, key, grid = drawn
    terms = key.statement.committee
    assert len(key.nodes) == SIZE == len(key.statement.holders) and terms.draw == 1 and terms.candidates == 40
    assert terms.colluders == 4 and key.threshold == SIZE // 2 + 1
    assert set(grid.asked["query.draw_commit"]) == set(NODES)
    assert set(grid.asked["query.keygen_hello"]) == set(key.nodes.values())  # only the committee made the key
    outside = [n for n in NODES if n not in key.nodes.values()]
    assert sorted(grid.asked["query.key_join"]) == outside
    for node in NODES:
        statement = threshold.key_statement(devices.contexts[node])
        assert statement.sha256 == key.statement.sha256
        held = threshold.HeldKey.recall(devices.contexts[node])
        assert (held is not None) == (node in key.nodes.values())  # shares only on the committee
    from flwr.app import Array, ArrayRecord

    p0 = key.public_key.to_arrays()[0]
    payload = threshold.encrypt_update(np.ones(10), 1, devices.contexts[outside[0]], ArrayRecord({"p0": Array(p0)}))
    assert payload.num_values == 10
    tampered = p0.copy()
    tampered[1, 7] ^= 1  # a server sending another key than the one the holders signed
    with pytest.raises(PrivacyError, match="not the one every key holder signed"):
        threshold.encrypt_update(np.ones(10), 1, devices.contexts[outside[0]], ArrayRecord({"p0": Array(tampered)}))


def reveal_messages(devices: Devices, number: int, entries: dict[int, bytes]) -> dict[int, RecordDict]:
    """The reveal a server sends, listing ``entries`` (node -> commitment), and each device's answer."""
    ids = sorted(str(n) for n in entries)
    tree = list_tree(ids, [entries[int(i)] for i in ids])
    out = {}
    for node in entries:
        record = ConfigRecord({"number": number, "count": len(ids), "root": tree.root,
                               "proof": tree.proof(list_entry(str(node), entries[node]))})
        try:
            out[node] = threshold.draw_reveal(RecordDict({DRAW_KEY: record}), CONFIG, devices.contexts[node])
        except UpdateRejected as exc:
            out[node] = exc
    return out


def commit_all(devices: Devices, number: int) -> dict[int, bytes]:
    msg = RecordDict({DRAW_KEY: ConfigRecord({"number": number})})
    return {n: threshold.draw_commit(msg, CONFIG, devices.contexts[n])[DRAW_KEY]["commitment"] for n in NODES}


def transcript(devices: Devices, number: int, entries: dict[int, bytes], replies: dict[int, RecordDict]) -> Draw:
    from fedproof.core.protocol import SignedEnvelope

    ids = sorted(str(n) for n in entries)
    return Draw(number, tuple(ids), tuple(replies[int(i)][DRAW_KEY]["secret"] for i in ids),
                tuple(SignedEnvelope.take(replies[int(i)]).signature for i in ids))


def test_a_server_that_names_its_own_committee_is_refused_by_the_members_and_the_others() -> None:
    """The server draws honestly, then runs the ceremony among the committee it would like (its accomplices first):
    every member refuses to deal; and a key it made anyway among them is refused by every device outside."""
    devices = Devices()
    entries = commit_all(devices, 1)
    draw = transcript(devices, 1, entries, reveal_messages(devices, 1, entries))
    fair = draw.committee(SIZE)
    wanted = sorted(str(n) for n in NODES[:SIZE])  # the accomplices the server would like
    assert tuple(wanted) != fair


    class Rigged(Draw):  # the server's own code, told that its choice is the draw's
        def committee(self, size: int) -> tuple[str, ...]:
            return tuple(wanted)

    rigged = Rigged(draw.number, draw.candidates, draw.secrets, draw.signatures)
    grid = FakeGrid(NODES, **devices.handlers())
    with pytest.raises(UpdateRejected, match="not the committee the draw picks"):  # each member checks
        run_ceremony(grid, CONFIG.client_record(), ALLOW, DOMAIN, 0, 5, 40, nodes=[int(w) for w in wanted],
                     draw=rigged, colluders=4)
    assert all(threshold.CeremonyState.recall(devices.contexts[int(w)]).commitment == b"" for w in wanted)
    # the server's second try: a committee of its choice that calls itself the draw's (a forged transcript)
    forged = Draw(1, draw.candidates, tuple(bytes(32) if c == draw.candidates[0] else s
                                            for c, s in zip(draw.candidates, draw.secrets)), draw.signatures)
    with pytest.raises(UpdateRejected, match="reveal does not verify"):
        threshold.check_committee(forged, forged.committee(SIZE), SIZE // 2 + 1, _terms(forged),
                                  CONFIG, devices.contexts[NODES[-1]])


def _terms(draw: Draw, colluders: int = 4):
    from ledger.signing import CommitteeTerms

    return CommitteeTerms(len(draw.candidates), colluders, draw.number, draw.seed)


def test_a_server_that_draws_among_its_accomplices_only_is_refused(monkeypatch) -> None:
    """Devices that accept a 3-of-5 committee at a risk of 1%: drawn from all 40 devices (4 of them, 10%, assumed
    the server's), its risk is 0.4%. A server that lists only 9 candidates, its 4 accomplices among them, gives
    them 3 seats 36% of the time (71% over the two draws): the devices refuse that committee, however the seed fell."""
    from privacy.policy import PrivacyPolicy

    monkeypatch.setattr("fl_client.threshold.draw.client_policy",
                        lambda config, context: PrivacyPolicy(max_capture_risk=0.01))
    devices = Devices()
    entries = commit_all(devices, 1)
    draw = transcript(devices, 1, entries, reveal_messages(devices, 1, entries))
    threshold.check_committee(draw, draw.committee(5), 3, _terms(draw), CONFIG, devices.contexts[NODES[0]])
    entries = {n: c for n, c in commit_all(devices, 2).items() if n in NODES[:9]}
    draw = transcript(devices, 2, entries, reveal_messages(devices, 2, entries))
    with pytest.raises(UpdateRejected, match="from 9 candidates.*after 2 draw.*chance they hold t seats is 0.71"):
        threshold.check_committee(draw, draw.committee(5), 3, _terms(draw), CONFIG, devices.contexts[NODES[0]])
    with pytest.raises(UpdateRejected, match="assume 1 colluders; this device assumes 4"):
        threshold.check_committee(draw, draw.committee(5), 3, _terms(draw, 1), CONFIG, devices.contexts[NODES[0]])


def test_a_device_reveals_its_secret_to_one_list_and_commits_once_per_draw() -> None:
    """A server that, having seen the reveals, builds a second list for the same draw (to steer the seed) gets no
    secret; a second commitment for an old draw is refused too."""
    devices = Devices()
    entries = commit_all(devices, 1)
    first = reveal_messages(devices, 1, entries)
    assert all(isinstance(r, RecordDict) for r in first.values())
    smaller = {n: c for n, c in entries.items() if n != NODES[0]}
    second = reveal_messages(devices, 1, smaller)
    assert all(isinstance(r, UpdateRejected) and "another list" in str(r) for r in second.values())
    with pytest.raises(UpdateRejected, match="drawn once"):
        threshold.draw_commit(RecordDict({DRAW_KEY: ConfigRecord({"number": 1})}), CONFIG, devices.contexts[NODES[0]])
    # a list that holds another commitment under this device's id: no secret
    tampered = {n: (bytes(32) if n == NODES[1] else c) for n, c in commit_all(devices, 2).items()}
    tree = list_tree(sorted(str(n) for n in tampered), [tampered[int(i)] for i in sorted(str(n) for n in tampered)])
    forged = ConfigRecord({"number": 2, "count": len(NODES), "root": tree.root,
                           "proof": tree.proof(list_entry(str(NODES[1]), bytes(32)))})
    with pytest.raises(UpdateRejected, match="does not hold this device's commitment"):
        threshold.draw_reveal(RecordDict({DRAW_KEY: forged}), CONFIG, devices.contexts[NODES[1]])


def test_aborted_draws_count_against_the_risk_a_device_accepts_over_every_run(monkeypatch) -> None:
    """Each draw the server aborts, in this run or by starting another, is another try at a committee it likes: a
    device multiplies the capture risk by the draws it took part in over its lifetime (counted on its own disk),
    so a committee it accepts after one draw it refuses after several."""
    from privacy.policy import PrivacyPolicy

    devices = Devices()
    node = NODES[0]
    for number in range(1, 3):
        entries = commit_all(devices, number)
    # a new run: a fresh Context, the same device (its state directory); draw numbers start again
    devices.contexts = {n: Context(run_id=2, node_id=n, node_config=dict(c.node_config), state=RecordDict(),
                                   run_config={}) for n, c in devices.contexts.items()}
    entries = commit_all(devices, 1)
    draw = transcript(devices, 1, entries, reveal_messages(devices, 1, entries))
    assert threshold.DrawState.recall(devices.contexts[node]).draws == 3
    risk = capture_risk(40, 12, 8, 5)  # a device assuming 30% colluders
    monkeypatch.setattr("fl_client.threshold.draw.client_policy",
                        lambda config, context: PrivacyPolicy(colluding_share=0.3, max_capture_risk=risk * 2))
    with pytest.raises(UpdateRejected, match="after 3 draw"):
        threshold.check_committee(draw, draw.committee(8), 5, _terms(draw, 12), CONFIG, devices.contexts[node])
    monkeypatch.setattr("fl_client.threshold.draw.client_policy",
                        lambda config, context: PrivacyPolicy(colluding_share=0.3, max_capture_risk=risk * 3))
    threshold.check_committee(draw, draw.committee(8), 5, _terms(draw, 12), CONFIG, devices.contexts[node])


def test_a_device_outside_the_committee_joins_only_the_committees_key(drawn) -> None:
    """A join whose statement names holders other than the draw's committee, or carries another public key, is
    refused; the device keeps the key it has."""
    devices, key, grid = drawn
    outside = next(n for n in NODES if n not in key.nodes.values())
    captured = {}
    handlers = devices.handlers()
    handlers["query_key_join"] = lambda node, msg: captured.setdefault(node, msg) and None
    server_committee.join(FakeGrid([outside], **handlers), CONFIG.client_record(), key,
                          key.draw, [outside], 5)
    msg = captured[outside]
    wrong_key = RecordDict({k: v for k, v in msg.content.items()})
    p0 = wrong_key["public-key"]["p0"].numpy().copy()
    p0[0, 0] ^= 1
    from flwr.app import Array, ArrayRecord

    wrong_key["public-key"] = ArrayRecord({"p0": Array(p0)})
    with pytest.raises(UpdateRejected, match="not the one the holders signed"):
        threshold.key_join(wrong_key, CONFIG, devices.contexts[outside])
    other_draw = RecordDict({k: v for k, v in msg.content.items()})
    record = dict(other_draw[TRANSCRIPT_KEY])
    record["number"] = 2
    other_draw[TRANSCRIPT_KEY] = ConfigRecord(record)
    with pytest.raises(UpdateRejected, match="committee"):
        threshold.key_join(other_draw, CONFIG, devices.contexts[outside])
    assert threshold.key_statement(devices.contexts[outside]).sha256 == key.statement.sha256


def test_a_key_statement_of_a_committee_is_refused_by_auditors_when_its_risk_is_too_high(drawn) -> None:
    _, key, _ = drawn
    keys = {h: ALLOW.key_for(h) for h in key.statement.holders}
    key.signed.verify(keys, DOMAIN.chain_id, DOMAIN.contract, DOMAIN.genesis, DOMAIN.run_id, 40)
    with pytest.raises(KeyStatementError, match="more than the 30 registered"):
        key.signed.verify(keys, DOMAIN.chain_id, DOMAIN.contract, DOMAIN.genesis, DOMAIN.run_id, 30)


def test_when_the_committee_goes_offline_a_new_draw_replaces_it_for_the_later_rounds() -> None:
    """Four of the eight members disconnect (t = 5): the server draws again (draw 2, among the 36 still connected),
    the new committee makes a key for rounds from 7, and every device, the old members included, encrypts under it
    from then on."""
    devices = Devices()
    grid = FakeGrid(NODES, **devices.handlers())
    key = make_key(devices, grid)
    assert server_committee.still_held(grid, key)
    gone = sorted(key.nodes.values())[:4]
    grid.nodes = [n for n in NODES if n not in gone]
    assert not server_committee.still_held(grid, key)
    new = server_committee.redraw(grid, CONFIG.client_record(), ALLOW, DOMAIN, key, timeout=5, first_round=7,
                                  committee=0, colluding_share=0.1, registered=len(NODES))
    assert new.draw.number == 2 and new.statement.first_round == 7 and len(new.draw.candidates) == 36
    assert not set(new.nodes.values()) & set(gone) and server_committee.still_held(grid, new)
    for node in grid.nodes:  # old members and old contributors alike now use the new key
        assert threshold.key_statement(devices.contexts[node]).sha256 == new.statement.sha256
    keys = {h: ALLOW.key_for(h) for h in new.statement.holders}
    new.signed.verify(keys, DOMAIN.chain_id, DOMAIN.contract, DOMAIN.genesis, DOMAIN.run_id, len(NODES))


def test_a_transcript_verified_once_is_remembered_only_for_exactly_that_transcript_and_allow_list() -> None:
    """A process remembers the draws it verified (a simulated fleet shares processes); a changed signature or
    secret, or an allow-list that revokes a candidate, is checked afresh and refused."""
    import dataclasses
    import secrets as token

    from ledger.committee import DrawError, commitment, list_digest, reveal_fields
    from ledger.signing import SigningKey
    from ledger.verification import AllowList, Domain

    keys = {f"c{i}": SigningKey.generate() for i in range(6)}
    allow, where = AllowList({c: k.public_key for c, k in keys.items()}), Domain(0, bytes(20), "memo")
    ids = tuple(sorted(keys))
    opened = tuple(token.token_bytes(32) for _ in ids)
    digest = list_digest(ids, [commitment(c, s) for c, s in zip(ids, opened)])
    signed = tuple(keys[c].sign(reveal_fields(where, c, 1, digest, s)) for c, s in zip(ids, opened))
    good = Draw(1, ids, opened, signed)
    good.verify(allow, where)
    good.verify(allow, where)  # remembered
    forged = dataclasses.replace(good, signatures=(keys["c1"].sign(reveal_fields(where, "c0", 1, digest, opened[0])),
                                                   *signed[1:]))
    with pytest.raises(DrawError, match="c0's reveal"):
        forged.verify(allow, where)
    with pytest.raises(DrawError):
        dataclasses.replace(good, secrets=(token.token_bytes(32), *opened[1:])).verify(allow, where)
    with pytest.raises(DrawError, match="revoked"):
        good.verify(allow.revoke("c3"), where)
    with pytest.raises(DrawError):
        good.verify(allow, Domain(0, bytes(20), "another run"))
