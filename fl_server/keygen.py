"""The server's side of the key ceremony (privacy.keygen): it relays, checks signatures, judges complaints, and
learns only public values. Five exchanges before the first round:

    hello    every connected node -> signed (party, CRP contribution, X25519 key); parties = who answered, allowed
    commit   every party, with all hellos -> a signed hash commitment to its deal
    reveal   every party, with every signed commitment -> its signed deal (public-key share, sealed Shamir shares)
    finish   every party, with every deal -> its signature of the key statement (key digest, t, holders, weight
             scale, first round), or a signed complaint about a dealer whose share does not open
    confirm  every party, with every holder's signature of the statement -> each starts using the key

The server computes the joint public key from the signed shares too, and the ceremony succeeds only if every party
signed the same statement. Who is left out of the next attempt is decided by evidence, not by who complained: a
deal that does not open its commitment excludes its dealer; a complaint is judged (privacy.keygen.judge) and
excludes the dealer or the complainer, whichever lied; a party that does not answer in time is left out. The
result is a :class:`FederationKey`: who holds shares (client id -> node), the joint key, and the key statement with
every holder's signature, which the lineage records on chain before the first round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedproof.base.records import get_record, need_record
from fedproof.base.errors import FedproofError
from fedproof.core.protocol import (
    CEREMONY_KEY,
    KEYGEN_COMMIT,
    KEYGEN_CONFIRM,
    KEYGEN_FINISH,
    KEYGEN_HELLO,
    KEYGEN_REVEAL,
    TRANSCRIPT_KEY,
    SignedEnvelope,
    hello_record,
    take_hello,
)
from fl_server.exchange import ask
from ledger.errors import LedgerError, UpdateVerificationError
from ledger.key_statement import KeyStatement, SignedKeyStatement
from ledger.committee import Draw
from ledger.signing import KEY_TAG, KEYGEN_TAG, CommitteeTerms, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import PrivacyError
from privacy.keygen import (
    Complaint,
    Hello,
    ceremony_crp,
    check_threshold,
    commitment_chunks,
    commitment_set_digest,
    deal_commitment,
    judge,
    reveal_chunks,
    sealed_hashes,
)
from privacy.threshold import JointPublicKey, ThresholdParams, majority

log = logging.getLogger(__name__)


class KeyCeremonyFailed(FedproofError):
    """The clients could not make the run's threshold key: the run cannot use threshold HE."""


class PartiesDropped(KeyCeremonyFailed):
    """Parties that said hello did not complete a later step, sent something unusable, or were found cheating:
    the ceremony starts again without their nodes (and with fresh secrets for everyone)."""

    def __init__(self, message: str, nodes: set[int]) -> None:
        super().__init__(message)
        self.nodes = nodes


CEREMONY_ATTEMPTS = 3


@dataclass(frozen=True)
class FederationKey:
    params: ThresholdParams
    nodes: Mapping[str, int]
    """Key holder (client id) -> its node."""
    public_key: JointPublicKey
    signed: SignedKeyStatement
    """The key statement, signed by every holder (what the lineage records on chain)."""
    draw: Draw | None = None
    """A committee's key: the draw that picked its holders (its transcript, which anyone can check)."""
    crp_seed: bytes = b""
    """The seed the common polynomial a expands from (a contributor keeps it instead of a: 32 bytes, not 64 KB)."""

    @property
    def statement(self) -> KeyStatement:
        return self.signed.statement

    @property
    def threshold(self) -> int:
        return self.statement.threshold

    @property
    def digest(self) -> bytes:
        """SHA-256 of the joint public key every holder signed."""
        return self.statement.public_key_sha256

    @property
    def points(self) -> dict[str, int]:
        return self.statement.points


def run_ceremony(grid: Grid, settings: Mapping, allow: AllowList, domain: Domain, threshold: int, timeout: float,
                 weight_scale: int, first_round: int = 1, params: ThresholdParams | None = None, *,
                 nodes: list[int] | None = None, draw: Draw | None = None, colluders: int = 0) -> FederationKey:
    """The run's key, made by the connected clients (or by ``nodes``, the committee ``draw`` picked). A party found
    cheating or silent is left out and the ceremony starts again with fresh secrets, up to
    :data:`CEREMONY_ATTEMPTS` times; the devices themselves refuse a key held by fewer than a majority of the
    registered clients. A committee is not shrunk: a member that drops out ends the attempt (a new draw replaces
    it, fl_server.committee)."""
    params, excluded = params or ThresholdParams(), set()
    attempts = 1 if draw is not None else CEREMONY_ATTEMPTS
    for attempt in range(1, attempts + 1):
        asked = [n for n in sorted(nodes if nodes is not None else grid.get_node_ids()) if n not in excluded]
        try:
            return _Ceremony(grid, settings, allow, domain, timeout, params, draw, colluders).run(
                asked, threshold, weight_scale, first_round)
        except PartiesDropped as exc:
            if attempt == attempts:
                raise
            log.warning("key ceremony: %s; starting again without them", exc)
            excluded |= exc.nodes
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Ceremony:
    grid: Grid
    settings: Mapping
    allow: AllowList
    domain: Domain
    timeout: float
    params: ThresholdParams
    draw: Draw | None = None
    """A committee's draw (its transcript goes to every member with the hellos); None: the whole federation."""
    colluders: int = 0
    nodes: dict[str, int] = field(default_factory=dict)
    """The parties that said hello (client id -> node), once known."""
    record: ConfigRecord = field(default_factory=ConfigRecord)
    """What the server proposes for the key (threshold, parties, weight scale, first round), sent at every step."""

    def run(self, asked: list[int], threshold: int, weight_scale: int, first_round: int) -> FederationKey:
        hellos = self._hellos(asked)
        parties = sorted(hellos)
        threshold = threshold or majority(len(parties))
        try:
            check_threshold(threshold, len(parties))
        except PrivacyError as exc:
            raise KeyCeremonyFailed(f"key ceremony: {exc} ({len(parties)} clients answered)") from exc
        self.nodes = {p: hellos[p][0] for p in parties}
        if self.draw is not None and tuple(parties) != self.draw.committee(len(parties)):
            missing = set(self.draw.committee(len(asked))) - set(parties)
            raise PartiesDropped(f"key ceremony: committee members {sorted(missing)[:5]} did not say hello",
                                 {n for n in asked if n not in {hellos[p][0] for p in parties}})
        self.record = ConfigRecord({"threshold": threshold, "parties": len(parties), "weight-scale": weight_scale,
                                    "first-round": first_round, "colluders": self.colluders})
        announced = {p: hellos[p][1] for p in parties}
        commitments = self._commitments(hellos)
        deals = self._reveals(commitments)
        seed, crp = ceremony_crp(self.params, announced)
        try:
            joint = JointPublicKey.combine(self.params, [deals[p][0] for p in parties], crp)
        except PrivacyError as exc:
            raise KeyCeremonyFailed(f"key ceremony: the public-key shares do not make a key: {exc}") from exc
        terms = CommitteeTerms() if self.draw is None else CommitteeTerms(
            len(self.draw.candidates), self.colluders, self.draw.number, self.draw.seed)
        statement = KeyStatement(joint.digest, threshold, tuple(parties), weight_scale, first_round, terms)
        signatures = self._finish(deals, announced, seed, statement)
        signed = SignedKeyStatement(statement, signatures)
        self._confirm(signed)
        log.info("key ceremony: %d key holders, threshold %d, key %s", len(parties), threshold,
                 statement.sha256.hex()[:16])
        return FederationKey(self.params, self.nodes, joint, signed, self.draw, seed)

    # -- 1. hello
    def _hellos(self, asked: list[int]) -> dict[str, tuple[int, Hello, SignedEnvelope]]:
        hellos: dict[str, tuple[int, Hello, SignedEnvelope]] = {}
        for reply in self._ask(asked, KEYGEN_HELLO, lambda node: RecordDict()):
            try:
                party, contribution, key = take_hello(need_record(reply.content, "hello", ConfigRecord))
                announced = Hello(party, contribution, key)
                envelope = SignedEnvelope.take(reply.content)
                self._verify(envelope, 1, party, announced.chunks())
            except (FedproofError, UpdateVerificationError, PrivacyError, KeyError) as exc:
                log.warning("key ceremony: node %s's hello set aside: %s", reply.metadata.src_node_id, exc)
                continue
            if party not in hellos:
                hellos[party] = (reply.metadata.src_node_id, announced, envelope)
        return hellos

    # -- 2. commit
    def _commitments(self, hellos) -> dict[str, tuple[bytes, SignedEnvelope]]:
        def with_hellos(_node: int) -> RecordDict:
            content = RecordDict({CEREMONY_KEY: self.record})
            if self.draw is not None:
                content[TRANSCRIPT_KEY] = ConfigRecord(self.draw.to_record())
            for i, party in enumerate(sorted(hellos)):
                _, announced, envelope = hellos[party]
                content[f"hello-{i:04d}"] = hello_record(party, announced.contribution, announced.exchange_key)
                envelope.put(content, f"hello-{i:04d}-signed")
            return content

        commitments = {}
        for party, reply in self._replies(KEYGEN_COMMIT, with_hellos):
            try:
                commitment = need_record(reply.content, "commitment", ConfigRecord)["commitment"]
                if not isinstance(commitment, bytes) or len(commitment) != 32:
                    raise KeyCeremonyFailed("a commitment is 32 bytes")
                envelope = SignedEnvelope.take(reply.content)
                self._verify(envelope, 2, party, commitment_chunks(party, commitment))
            except (FedproofError, UpdateVerificationError, KeyError, TypeError) as exc:
                raise PartiesDropped(f"{party}'s commitment is unusable: {exc}", {self.nodes[party]}) from exc
            commitments[party] = (commitment, envelope)
        self._all_answered("commit", commitments)
        return commitments

    # -- 3. reveal
    def _reveals(self, commitments) -> dict[str, tuple[np.ndarray, dict[str, bytes], SignedEnvelope]]:
        parties = sorted(commitments)
        set_digest = commitment_set_digest({p: commitments[p][0] for p in parties})

        def with_commitments(_node: int) -> RecordDict:
            content = RecordDict({CEREMONY_KEY: self.record})
            for i, party in enumerate(parties):
                commitment, envelope = commitments[party]
                content[f"commit-{i:04d}"] = ConfigRecord({"party": party, "commitment": commitment})
                envelope.put(content, f"commit-{i:04d}-signed")
            return content

        deals, cheats = {}, set()
        for party, reply in self._replies(KEYGEN_REVEAL, with_commitments):
            try:
                public = need_record(reply.content, "deal", ArrayRecord)["public-share"].numpy()
                sealed_record = need_record(reply.content, "sealed", ConfigRecord)
                sealed = dict(zip(list(sealed_record["recipients"]), list(sealed_record["shares"])))
                envelope = SignedEnvelope.take(reply.content)
                if set(sealed) != set(parties) or not all(isinstance(s, bytes) for s in sealed.values()):
                    raise KeyCeremonyFailed(f"{party} sealed shares for {sorted(sealed)[:4]}, not for every party")
                hashes = sealed_hashes(sealed)
                self._verify(envelope, 3, party, reveal_chunks(party, public, hashes, set_digest))
            except (FedproofError, UpdateVerificationError, KeyError, TypeError, ValueError) as exc:
                raise PartiesDropped(f"{party}'s deal is unusable: {exc}", {self.nodes[party]}) from exc
            if deal_commitment(party, public, hashes) != commitments[party][0]:
                log.warning("key ceremony: %s revealed a deal other than the one it committed to", party)
                cheats.add(party)
            deals[party] = (public, sealed, envelope)
        if cheats:
            raise PartiesDropped(f"{', '.join(sorted(cheats))} revealed deals that do not open their commitments",
                                 {self.nodes[p] for p in cheats})
        self._all_answered("reveal", deals)
        return deals

    # -- 4. finish
    def _finish(self, deals, hellos: Mapping[str, Hello], seed: bytes, statement: KeyStatement) -> dict[str, bytes]:
        parties = sorted(deals)
        party_of = {node: party for party, node in self.nodes.items()}

        def with_deals(node: int) -> RecordDict:
            content = RecordDict({CEREMONY_KEY: self.record})
            for i, dealer in enumerate(parties):
                public, sealed, envelope = deals[dealer]
                hashes = sealed_hashes(sealed)
                content[f"deal-{i:04d}"] = ArrayRecord({"public-share": Array(public)})
                content[f"deal-{i:04d}-sealed"] = ConfigRecord({
                    "party": dealer, "for-you": sealed[party_of[node]], "recipients": sorted(hashes),
                    "hashes": [hashes[r] for r in sorted(hashes)]})
                envelope.put(content, f"deal-{i:04d}-signed")
            return content

        signatures, culprits = {}, {}
        for party, reply in self._replies(KEYGEN_FINISH, with_deals):
            try:
                envelope = SignedEnvelope.take(reply.content)
                record = get_record(reply.content, "complaint", ConfigRecord)
                if record is not None:
                    complaint = Complaint(party, str(record["dealer"]), bytes(record["exchange-private"]))
                    if complaint.dealer not in deals:
                        raise KeyCeremonyFailed(f"{party} complains about {complaint.dealer!r}, not a dealer")
                    self._verify(envelope, 5, party, complaint.chunks())
                    culprit = judge(self.params, complaint, hellos[party], deals[complaint.dealer][1][party], seed)
                    culprits[culprit] = f"{party}'s complaint about {complaint.dealer}"
                    continue
                if need_record(reply.content, "key", ConfigRecord)["statement"] != statement.to_bytes():
                    raise KeyCeremonyFailed("it computed another key statement than the server")
                verify_statement(self.allow, self.domain, envelope.fields, envelope.signature, tag=KEY_TAG, round=0,
                                 client_id=party, payload_sha256=statement.sha256)
            except (FedproofError, UpdateVerificationError, PrivacyError, KeyError, TypeError, ValueError) as exc:
                culprits[party] = f"its key statement is unusable: {exc}"
                continue
            signatures[party] = envelope.signature
        if culprits:
            raise PartiesDropped("; ".join(f"{c} excluded ({why})" for c, why in sorted(culprits.items())),
                                 {self.nodes[c] for c in culprits})
        self._all_answered("finish", signatures)
        return signatures

    # -- 5. confirm
    def _confirm(self, signed: SignedKeyStatement) -> None:
        try:
            signed.verify({h: self.allow.key_for(h) for h in signed.statement.holders}, self.domain.chain_id,
                          self.domain.contract, self.domain.genesis, self.domain.run_id,
                          max(len(signed.statement.holders), signed.statement.committee.candidates))
        except (LedgerError, FedproofError) as exc:
            raise KeyCeremonyFailed(f"key ceremony: the key statement does not verify: {exc}") from exc
        record = ConfigRecord({"statement": signed.statement.to_bytes(), "signatures": signed.signatures_bytes()})
        confirmed = set()
        for party, reply in self._replies(KEYGEN_CONFIRM, lambda _n: RecordDict({CEREMONY_KEY: self.record,
                                                                                  "key-statement": record})):
            record_reply = get_record(reply.content, "confirmed", ConfigRecord)
            if record_reply is not None and record_reply.get("key-sha256") == signed.statement.sha256:
                confirmed.add(party)
        self._all_answered("confirm", confirmed)

    # -- plumbing
    def _verify(self, envelope: SignedEnvelope, step: int, party: str, chunks: list[bytes]) -> None:
        verify_statement(self.allow, self.domain, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=step,
                         client_id=party, payload_sha256=payload_digest(chunks))

    def _ask(self, nodes: list[int], kind: str, content_for: Callable[[int], RecordDict]) -> list[Message]:
        replies, missing = ask(self.grid, nodes, kind, content_for, self.settings, 0, self.timeout, group="keygen")
        for r in missing:
            log.warning("key ceremony: %s", r)
        for r in replies:
            if r.has_error():
                log.warning("key ceremony: node %s failed: %s", r.metadata.src_node_id, r.error.reason)
        return [r for r in replies if not r.has_error()]

    def _replies(self, kind: str, content_for: Callable[[int], RecordDict]) -> list[tuple[str, Message]]:
        party_of = {node: party for party, node in self.nodes.items()}
        replies = self._ask(list(self.nodes.values()), kind, content_for)
        return [(party_of[r.metadata.src_node_id], r) for r in replies if r.metadata.src_node_id in party_of]

    def _all_answered(self, step: str, answers) -> None:
        missing = [p for p in sorted(self.nodes) if p not in answers]
        if missing:
            raise PartiesDropped(f"key ceremony: {len(missing)} of {len(self.nodes)} parties did not complete the "
                                 f"{step} step ({', '.join(missing[:5])})", {self.nodes[p] for p in missing})
