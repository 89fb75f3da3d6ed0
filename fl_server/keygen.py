"""The server's side of the key ceremony (privacy.keygen): it relays, checks signatures, and learns only public
values. Three exchanges before the first round:

    hello   every connected node -> signed (party, CRP contribution, X25519 key); parties = who answered, allowed
    deal    every party, with all hellos -> signed (public-key share, one sealed Shamir share per party)
    finish  every party, with all public shares and the shares sealed to it -> signed digest of the joint key

The server computes the joint public key from the signed shares too, and the ceremony succeeds only if every
party acknowledged that same key. The result is a :class:`FederationKey`: who holds shares (client id -> node),
the threshold, and the key's digest. A party missing at any step fails the ceremony with a typed error: the key
must be complete before any update is encrypted under it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedproof.errors import FedproofError
from fedproof.protocol import (
    CEREMONY_KEY,
    CONFIG_KEY,
    KEYGEN_DEAL,
    KEYGEN_FINISH,
    KEYGEN_HELLO,
    SignedEnvelope,
    hello_record,
    round_settings,
    take_hello,
)
from fl_server.exchange import exchange
from ledger.errors import UpdateVerificationError
from ledger.signing import KEYGEN_TAG, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import PrivacyError
from privacy.keygen import Hello, check_threshold, deal_chunks, sealed_hashes
from privacy.threshold import JointPublicKey, ThresholdParams, common_random_polynomial, crp_seed, majority

log = logging.getLogger(__name__)


class KeyCeremonyFailed(FedproofError):
    """The clients could not make the run's threshold key: the run cannot use threshold HE."""


class PartiesDropped(KeyCeremonyFailed):
    """Parties that said hello did not complete a later step (or sent something unusable): the ceremony starts
    again without their nodes."""

    def __init__(self, message: str, nodes: set[int]) -> None:
        super().__init__(message)
        self.nodes = nodes


CEREMONY_ATTEMPTS = 3


@dataclass(frozen=True)
class FederationKey:
    params: ThresholdParams
    nodes: Mapping[str, int]
    """Key holder (client id) -> its node."""
    threshold: int
    digest: bytes
    """SHA-256 of the joint public key every holder acknowledged."""

    @property
    def points(self) -> dict[str, int]:
        return {party: i + 1 for i, party in enumerate(sorted(self.nodes))}


def run_ceremony(grid: Grid, settings: Mapping, allow: AllowList, domain: Domain, threshold: int, timeout: float,
                 params: ThresholdParams | None = None) -> FederationKey:
    """The run's key, made by the connected clients. A party that drops out (or sends something unusable) after
    its hello is left out and the ceremony starts again with fresh secrets, up to :data:`CEREMONY_ATTEMPTS` times;
    the devices themselves refuse a key held by fewer than a majority of the registered clients."""
    params, excluded = params or ThresholdParams(), set()
    for attempt in range(1, CEREMONY_ATTEMPTS + 1):
        nodes = [n for n in sorted(grid.get_node_ids()) if n not in excluded]
        try:
            return _ceremony(grid, nodes, settings, allow, domain, threshold, timeout, params)
        except PartiesDropped as exc:
            if attempt == CEREMONY_ATTEMPTS:
                raise
            log.warning("key ceremony: %s; starting again without them", exc)
            excluded |= exc.nodes
    raise AssertionError("unreachable")  # pragma: no cover


def _ceremony(grid: Grid, nodes_asked: list[int], settings: Mapping, allow: AllowList, domain: Domain,
              threshold: int, timeout: float, params: ThresholdParams) -> FederationKey:
    config = round_settings(settings, 0)

    # 1. hello
    hellos: dict[str, tuple[int, Hello, SignedEnvelope]] = {}
    for reply in _ask(grid, nodes_asked, KEYGEN_HELLO, lambda node: RecordDict(), config, timeout):
        try:
            party, contribution, key = take_hello(reply.content.config_records["hello"])
            announced = Hello(party, contribution, key)
            envelope = SignedEnvelope.take(reply.content)
            verify_statement(allow, domain, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=1,
                             client_id=party, payload_sha256=payload_digest(announced.chunks()))
        except (FedproofError, UpdateVerificationError, PrivacyError, KeyError) as exc:
            log.warning("key ceremony: node %s's hello set aside: %s", reply.metadata.src_node_id, exc)
            continue
        if party not in hellos:
            hellos[party] = (reply.metadata.src_node_id, announced, envelope)
    parties = sorted(hellos)
    threshold = threshold or majority(len(parties))
    try:
        check_threshold(threshold, len(parties))
    except PrivacyError as exc:
        raise KeyCeremonyFailed(f"key ceremony: {exc} ({len(parties)} clients answered)") from exc
    nodes = {p: hellos[p][0] for p in parties}
    ceremony = ConfigRecord({"threshold": threshold, "parties": len(parties)})

    # 2. deal
    def with_hellos(_node: int) -> RecordDict:
        content = RecordDict({CEREMONY_KEY: ceremony})
        for i, party in enumerate(parties):
            _, announced, envelope = hellos[party]
            content[f"hello-{i:04d}"] = hello_record(party, announced.contribution, announced.exchange_key)
            envelope.put(content, f"hello-{i:04d}-signed")
        return content

    deals = {}
    for party, reply in _by_party(_ask(grid, list(nodes.values()), KEYGEN_DEAL, with_hellos, config, timeout), nodes):
        try:
            public = reply.content.array_records["deal"]["public-share"].numpy()
            sealed_record = reply.content.config_records["sealed"]
            sealed = dict(zip(list(sealed_record["recipients"]), list(sealed_record["shares"])))
            envelope = SignedEnvelope.take(reply.content)
            if set(sealed) != set(parties) or not all(isinstance(s, bytes) for s in sealed.values()):
                raise KeyCeremonyFailed(f"{party} sealed shares for {sorted(sealed)[:4]}, not for every party")
            verify_statement(allow, domain, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=2,
                             client_id=party, payload_sha256=payload_digest(deal_chunks(party, public,
                                                                                        sealed_hashes(sealed))))
        except (FedproofError, UpdateVerificationError, KeyError, TypeError, ValueError) as exc:
            raise PartiesDropped(f"{party}'s deal is unusable: {exc}", {nodes[party]}) from exc
        deals[party] = (public, sealed, envelope)
    _all_answered("deal", deals, nodes)
    crp = common_random_polynomial(params, crp_seed({p: hellos[p][1].contribution for p in parties}))
    try:
        joint = JointPublicKey.combine(params, [deals[p][0] for p in parties], crp)
    except PrivacyError as exc:
        raise KeyCeremonyFailed(f"key ceremony: the public-key shares do not make a key: {exc}") from exc

    # 3. finish
    party_of = {node: party for party, node in nodes.items()}

    def with_deals(node: int) -> RecordDict:
        content = RecordDict({CEREMONY_KEY: ceremony})
        for i, dealer in enumerate(parties):
            public, sealed, envelope = deals[dealer]
            hashes = sealed_hashes(sealed)
            content[f"deal-{i:04d}"] = ArrayRecord({"public-share": Array(public)})
            content[f"deal-{i:04d}-sealed"] = ConfigRecord({
                "party": dealer, "for-you": sealed[party_of[node]], "recipients": sorted(hashes),
                "hashes": [hashes[r] for r in sorted(hashes)]})
            envelope.put(content, f"deal-{i:04d}-signed")
        return content

    acks = {}
    for party, reply in _by_party(_ask(grid, list(nodes.values()), KEYGEN_FINISH, with_deals, config, timeout), nodes):
        try:
            digest = reply.content.config_records["ack"]["public-key-sha256"]
            envelope = SignedEnvelope.take(reply.content)
            verify_statement(allow, domain, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=3,
                             client_id=party, payload_sha256=payload_digest([b"ack", digest]))
        except (FedproofError, UpdateVerificationError, KeyError, TypeError) as exc:
            raise PartiesDropped(f"{party}'s acknowledgement is unusable: {exc}", {nodes[party]}) from exc
        if digest != joint.digest:
            raise PartiesDropped(f"{party} computed another joint key than the server", {nodes[party]})
        acks[party] = digest
    _all_answered("finish", acks, nodes)
    log.info("key ceremony: %d key holders, threshold %d, key %s", len(parties), threshold, joint.digest.hex()[:16])
    return FederationKey(params, nodes, threshold, joint.digest)


def _ask(grid: Grid, nodes: list[int], kind: str, content_for, config: ConfigRecord, timeout: float
         ) -> list[Message]:
    messages = []
    for node in nodes:
        content = content_for(node)
        content[CONFIG_KEY] = config
        messages.append(Message(content, dst_node_id=node, message_type=kind, group_id="keygen"))
    replies, missing = exchange(grid, messages, timeout, kind)
    for r in missing:
        log.warning("key ceremony: %s", r)
    for r in replies:
        if r.has_error():
            log.warning("key ceremony: node %s failed: %s", r.metadata.src_node_id, r.error.reason)
    return [r for r in replies if not r.has_error()]


def _by_party(replies: list[Message], nodes: Mapping[str, int]) -> list[tuple[str, Message]]:
    party_of = {node: party for party, node in nodes.items()}
    return [(party_of[r.metadata.src_node_id], r) for r in replies if r.metadata.src_node_id in party_of]


def _all_answered(step: str, answers: Mapping[str, object], nodes: Mapping[str, int]) -> None:
    missing = [p for p in sorted(nodes) if p not in answers]
    if missing:
        raise PartiesDropped(f"key ceremony: {len(missing)} of {len(nodes)} parties did not complete the {step} "
                             f"step ({', '.join(missing[:5])})", {nodes[p] for p in missing})
