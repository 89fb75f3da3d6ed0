"""The run's key holders: the whole federation, or a committee the devices draw by sortition (ledger.committee).

    decide   the size: every client up to :data:`WHOLE_FEDERATION_UP_TO`, else the smallest committee whose
             capture risk (the run's assumed share of colluders, over :data:`LIFETIME_DRAWS` draws) is within
             the default device policy, or the size the run names
    draw     commit, then reveal, over every connected device; a candidate that does not reveal, or reveals
             something that does not open its commitment, is left out of the next draw (a fresh one: secrets are
             revealed to one list only)
    key      the key ceremony (fl_server.keygen) among the committee the draw picks; each member checks the
             transcript before it deals. A member that drops out means a new draw, not a smaller committee
    join     every other device gets the signed statement, the transcript and the joint public key, checks them,
             and from then on encrypts under the key

The server learns nothing it could use to choose: the seed is fixed by the commitments before any secret is
revealed, and its only lever (aborting a draw) is counted by every device against its risk bound.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid

from fedproof.base.records import get_record, need_record
from fedproof.core.protocol import (
    DRAW_COMMIT,
    DRAW_KEY,
    DRAW_REVEAL,
    KEY_JOIN,
    PUBLIC_KEY_KEY,
    TRANSCRIPT_KEY,
    SignedEnvelope,
)
from fl_server.exchange import ask
from fl_server.keygen import FederationKey, KeyCeremonyFailed, PartiesDropped, run_ceremony
from ledger.committee import (
    DEFAULT_MAX_CAPTURE_RISK,
    DRAW_STEP,
    Draw,
    DrawError,
    commitment,
    committee_size,
    digest_of,
    list_entry,
    list_tree,
    reveal_fields,
)
from ledger.errors import LedgerError
from ledger.signing import KEYGEN_TAG
from ledger.verification import AllowList, Domain, verify_statement

log = logging.getLogger(__name__)

WHOLE_FEDERATION_UP_TO = 32
DRAW_ATTEMPTS = 3
LIFETIME_DRAWS = 100
"""What a committee is sized for: its capture risk times the draws a device may see over its lifetime (each
counts them, over every run) stays within the default policy's 1e-6 for the first 100 draws."""
JOIN_BATCH = 100
"""Devices sent the key at once (each message carries the joint public key: bounded memory on the server)."""


def committee_colluders(share: float, registered: int) -> int:
    return math.ceil(share * registered - 1e-9)


def planned_size(requested: int, connected: int, colluders: int) -> int:
    """0: the whole federation; else the committee's size (``requested`` 0: decide, -1: whole federation)."""
    if requested == -1 or (requested == 0 and connected <= WHOLE_FEDERATION_UP_TO):
        return 0
    if requested > 0:
        return requested
    return committee_size(connected, colluders, DEFAULT_MAX_CAPTURE_RISK, LIFETIME_DRAWS)


def make_key(grid: Grid, settings: Mapping, allow: AllowList, domain: Domain, *, threshold: int, timeout: float,
             weight_scale: int, first_round: int, committee: int, colluding_share: float, registered: int,
             first_draw: int = 1) -> FederationKey:
    """The run's threshold key: made by every connected client, or by a committee they draw (draws numbered from
    ``first_draw``: a device commits to each draw number once)."""
    nodes = sorted(grid.get_node_ids())
    colluders = committee_colluders(colluding_share, registered)
    try:
        size = planned_size(committee, len(nodes), colluders)
    except DrawError as exc:
        raise KeyCeremonyFailed(f"key committee: {exc}") from exc
    if not size:
        return run_ceremony(grid, settings, allow, domain, threshold, timeout, weight_scale, first_round)
    excluded: set[int] = set()
    for number in range(first_draw, first_draw + DRAW_ATTEMPTS):
        drawn = draw(grid, settings, allow, domain, timeout, number, [n for n in nodes if n not in excluded])
        if drawn.draw is None:
            excluded |= drawn.dropped
            continue
        members = [drawn.nodes[c] for c in drawn.draw.committee(min(size, len(drawn.draw.candidates)))]
        try:  # the run proposes its colluders; every member checks it assumes no more
            key = run_ceremony(grid, settings, allow, domain, threshold, timeout, weight_scale, first_round,
                               nodes=members, draw=drawn.draw, colluders=colluders)
        except PartiesDropped as exc:
            log.warning("key committee of draw %d: %s; drawing again without them", number, exc)
            excluded |= exc.nodes
            continue
        join(grid, settings, key, drawn.draw, [n for n in nodes if n not in set(members)], timeout)
        return key
    raise KeyCeremonyFailed(f"key committee: no committee completed the key in {DRAW_ATTEMPTS} draws")


def still_held(grid: Grid, key: FederationKey) -> bool:
    """Whether at least t of a drawn committee's members are still connected (Flower drops a node that stops
    sending heartbeats). A whole-federation key is never re-drawn."""
    return key.draw is None or len(set(key.nodes.values()) & set(grid.get_node_ids())) >= key.threshold


def redraw(grid: Grid, settings: Mapping, allow: AllowList, domain: Domain, key: FederationKey, *, timeout: float,
           first_round: int, committee: int, colluding_share: float, registered: int) -> FederationKey:
    """A fresh committee and key for rounds from ``first_round``, when the old committee can no longer decrypt: a
    new draw among the devices connected now (its number follows the last), a new ceremony, every other device
    joining. Shares are not re-dealt from the old key (Lattigo's re-sharing): the old key's members are gone, and
    a fresh key costs one draw and one ceremony (README, "Running a fleet")."""
    assert key.draw is not None, "only a drawn committee is re-drawn"
    log.warning("key committee: fewer than %d of its %d members are connected; drawing a new one for rounds from %d",
                key.threshold, len(key.nodes), first_round)
    return make_key(grid, settings, allow, domain, threshold=0, timeout=timeout, weight_scale=key.statement.weight_scale,
                    first_round=first_round, committee=committee or len(key.nodes), colluding_share=colluding_share,
                    registered=registered, first_draw=key.draw.number + 1)


@dataclass(frozen=True)
class Drawn:
    draw: Draw | None
    """None when a candidate did not reveal (``dropped`` says who): the draw is void."""
    nodes: Mapping[str, int]
    dropped: set[int]


def draw(grid: Grid, settings: Mapping, allow: AllowList, domain: Domain, timeout: float, number: int,
         nodes: list[int]) -> Drawn:
    """One draw over ``nodes``: commit, freeze the list, reveal. Every reveal must verify, or the draw is void."""
    replies, _ = ask(grid, nodes, DRAW_COMMIT, RecordDict({DRAW_KEY: ConfigRecord({"number": number})}), settings, 0,
                     timeout, group="draw")
    committed: dict[str, tuple[int, bytes]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        record = get_record(reply.content, DRAW_KEY, ConfigRecord)
        party = record.get("party") if record is not None else None
        value = record.get("commitment") if record is not None else None
        if isinstance(party, str) and party in allow.keys and isinstance(value, bytes) and len(value) == 32 \
                and party not in committed:
            committed[party] = (reply.metadata.src_node_id, value)
    candidates = sorted(committed)
    commitments = [committed[c][1] for c in candidates]
    node_of = {c: committed[c][0] for c in candidates}
    tree = list_tree(candidates, commitments)
    party_of = {n: c for c, n in node_of.items()}

    def frozen(node: int) -> RecordDict:  # the list's root, and this candidate's proof of its own entry
        party = party_of[node]
        return RecordDict({DRAW_KEY: ConfigRecord({
            "number": number, "count": len(candidates), "root": tree.root,
            "proof": tree.proof(list_entry(party, committed[party][1]))})})

    replies, _ = ask(grid, [node_of[c] for c in candidates], DRAW_REVEAL, frozen, settings, 0, timeout, group="draw")
    digest = digest_of(len(candidates), tree.root)
    revealed: dict[str, tuple[bytes, bytes]] = {}
    for reply in replies:
        party = party_of.get(reply.metadata.src_node_id)
        if party is None or reply.has_error():
            continue
        try:
            secret = need_record(reply.content, DRAW_KEY, ConfigRecord)["secret"]
            envelope = SignedEnvelope.take(reply.content)
            if not isinstance(secret, bytes) or commitment(party, secret) != committed[party][1]:
                continue
            fields = reveal_fields(domain, party, number, digest, secret)
            verify_statement(allow, domain, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=DRAW_STEP,
                             client_id=party, payload_sha256=fields.payload_sha256)
        except (KeyError, LedgerError, TypeError, ValueError):
            continue
        revealed[party] = (secret, envelope.signature)
    dropped = {node_of[c] for c in candidates if c not in revealed}
    if dropped or not candidates:
        log.warning("committee draw %d: %d of %d candidates did not reveal; the draw is void", number, len(dropped),
                    len(candidates))
        return Drawn(None, node_of, dropped or set(nodes))
    transcript = Draw(number, tuple(candidates), tuple(revealed[c][0] for c in candidates),
                      tuple(revealed[c][1] for c in candidates))
    log.info("committee draw %d: %d candidates, seed %s", number, len(candidates), transcript.seed.hex()[:16])
    return Drawn(transcript, node_of, set())


def join(grid: Grid, settings: Mapping, key: FederationKey, transcript: Draw, nodes: list[int], timeout: float
         ) -> int:
    """Send every device outside the committee the key to encrypt under; returns how many confirmed it."""
    p0, _ = key.public_key.to_arrays()
    content = RecordDict({
        "key-statement": ConfigRecord({"statement": key.statement.to_bytes(),
                                       "signatures": key.signed.signatures_bytes(), "crp-seed": key.crp_seed}),
        TRANSCRIPT_KEY: ConfigRecord(transcript.to_record()),
        PUBLIC_KEY_KEY: ArrayRecord({"p0": Array(p0)}),
    })
    confirmed = 0
    for start in range(0, len(nodes), JOIN_BATCH):
        replies, _ = ask(grid, nodes[start:start + JOIN_BATCH], KEY_JOIN, content, settings, 0, timeout, group="join")
        for reply in replies:
            record = None if reply.has_error() else get_record(reply.content, "confirmed", ConfigRecord)
            if record is not None and record.get("key-sha256") == key.statement.sha256:
                confirmed += 1
            elif reply.has_error():
                log.warning("key join: node %s refused: %s", reply.metadata.src_node_id, reply.error.reason)
    log.info("key join: %d of %d devices outside the committee hold the key", confirmed, len(nodes))
    return confirmed
