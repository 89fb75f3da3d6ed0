"""The key ceremony's five steps, on the device: hello, commit, reveal, finish (sign the key statement or complain),
confirm (the key is used only once every holder signed the same statement)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedproof.base.records import get_record, need_record
from fedproof.core.config import RunConfig
from fedproof.base.errors import UpdateRejected
from fedproof.core.protocol import CEREMONY_KEY, TRANSCRIPT_KEY, SignedEnvelope, hello_record, take_hello
from fl_client.policy import client_policy, federation_size
from fl_client.signing import allow_list, client_id, domain, sign_statement
from ledger.errors import LedgerError
from ledger.key_statement import KeyStatement, SignedKeyStatement
from ledger.signing import KEY_TAG, KEYGEN_TAG, payload_digest
from ledger.verification import verify_statement
from privacy.keygen import (
    Complaint,
    Deal,
    Hello,
    PartySecrets,
    check_commitments,
    commitment_chunks,
    deal,
    deal_commitment,
    finish,
    hello,
    reveal_chunks as deal_reveal_chunks,
    sealed_hashes,
)
from privacy.threshold import majority
from fl_client.threshold.shared import MAX_WEIGHT_SCALE, PARAMS, _config
from fl_client.threshold.state import CeremonyState, HeldKey, JoinedKey, PendingKey
from fl_client.threshold.draw import check_committee
from ledger.committee import Draw, DrawError
from ledger.signing import CommitteeTerms


# ----------------------------------------------------------------------------------------- the ceremony

@dataclass(frozen=True)
class _Ceremony:
    """What the server proposes for the key (checked here; signed in the key statement if the device agrees)."""

    threshold: int
    parties: int
    weight_scale: int
    first_round: int
    colluders: int
    """A committee key: how many registered clients the server proposes to assume may collude (0 otherwise)."""

    @classmethod
    def take(cls, content: RecordDict) -> _Ceremony:
        record = get_record(content, CEREMONY_KEY, ConfigRecord)
        if record is None:
            raise UpdateRejected("not a key-ceremony message")
        ceremony = cls(*(_config(record, k, int) for k in ("threshold", "parties", "weight-scale", "first-round",
                                                           "colluders")))
        if not 1 <= ceremony.weight_scale <= MAX_WEIGHT_SCALE or ceremony.first_round < 1:
            raise UpdateRejected(f"a weight scale outside 1..{MAX_WEIGHT_SCALE} or a first round below 1")
        return ceremony


def keygen_hello(config: RunConfig, context: Context) -> RecordDict:
    """Step 1: fresh secrets for this attempt (a new hello forgets any earlier attempt's), announced signed."""
    party = client_id(context)
    announced, secrets = hello(PARAMS, party)
    PendingKey.forget(context)
    CeremonyState(secrets.to_bytes()).keep(context)
    content = RecordDict({"hello": hello_record(party, announced.contribution, announced.exchange_key)})
    return sign_statement(content, announced.chunks(), KEYGEN_TAG, 1, config, context)


def _verified_hellos(content: RecordDict, config: RunConfig, context: Context, ceremony: _Ceremony
                     ) -> tuple[dict[str, Hello], CommitteeTerms]:
    """Everyone's signed hello, and the terms of the committee they are: the whole federation (a majority of the
    registered clients at least), or the committee a draw picks (its transcript comes with the hellos)."""
    allow, where = allow_list(config, context), domain(config, context)
    hellos: dict[str, Hello] = {}
    for i in range(ceremony.parties):
        party, contribution, exchange_key = take_hello(need_record(content, f"hello-{i:04d}", ConfigRecord))
        announced = Hello(party, contribution, exchange_key)
        envelope = SignedEnvelope.take(content, f"hello-{i:04d}-signed")
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=1,
                         client_id=party, payload_sha256=payload_digest(announced.chunks()))
        if party in hellos:
            raise UpdateRejected(f"party {party!r} announced twice")
        hellos[party] = announced
    transcript = get_record(content, TRANSCRIPT_KEY, ConfigRecord)
    if transcript is not None:  # a committee: exactly the one the draw picks, at a risk this device accepts
        try:
            draw = Draw.from_record(transcript)
        except DrawError as exc:
            raise UpdateRejected(f"committee: {exc}") from exc
        terms = CommitteeTerms(len(draw.candidates), ceremony.colluders, draw.number, draw.seed)
        check_committee(draw, tuple(sorted(hellos)), ceremony.threshold, terms, config, context)
        return hellos, terms
    federation = federation_size(config, context, len(allow.keys))
    if len(hellos) < majority(federation):  # a server must not shrink the key to itself and its accomplices
        raise UpdateRejected(f"a key of {len(hellos)} parties: this device joins only keys held by a majority of "
                             f"the {federation} registered clients, or by a committee drawn by sortition")
    return hellos, CommitteeTerms()


def keygen_commit(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 2: check everyone's hello, make this party's deal and keep it; announce only its commitment."""
    ceremony = _Ceremony.take(content)
    hellos, terms = _verified_hellos(content, config, context, ceremony)
    stored = CeremonyState.recall(context)
    if stored is None or stored.parties:  # dealing one secret twice, to other sets, could leak it
        raise UpdateRejected("a commit request before this device's hello, or a second one for the same secret")
    secrets = PartySecrets.from_bytes(stored.secrets, PARAMS)
    party = client_id(context)
    dealt = deal(PARAMS, party, secrets, hellos, ceremony.threshold)
    commitment = deal_commitment(party, dealt.public_share, sealed_hashes(dealt.sealed))
    parties = sorted(hellos)
    recipients = sorted(dealt.sealed)
    CeremonyState(
        secrets.to_bytes(), ceremony.threshold, ceremony.weight_scale, ceremony.first_round, tuple(parties),
        tuple(hellos[p].contribution for p in parties), tuple(hellos[p].exchange_key for p in parties), commitment,
        tuple(recipients), tuple(dealt.sealed[r] for r in recipients), dealt.public_share,
        candidates=terms.candidates, colluders=terms.colluders, draw=terms.draw, seed=terms.seed).keep(context)
    reply = RecordDict({"commitment": ConfigRecord({"commitment": commitment})})
    return sign_statement(reply, commitment_chunks(party, commitment), KEYGEN_TAG, 2, config, context)


def _stored(context: Context, step: str) -> CeremonyState:
    stored = CeremonyState.recall(context)
    if stored is None or not stored.commitment:
        raise UpdateRejected(f"a {step} request before this device committed to its deal")
    return stored


def _hellos(stored: CeremonyState) -> dict[str, Hello]:
    return {p: Hello(p, c, k) for p, c, k in zip(stored.parties, stored.contributions, stored.exchange_keys)}


def _own_deal(stored: CeremonyState, context: Context) -> Deal:
    assert stored.public_share is not None, "kept with the commitment"
    return Deal(client_id(context), stored.public_share, dict(zip(stored.recipients, stored.sealed)))


def keygen_reveal(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 3: given every party's signed commitment, reveal this party's deal to that frozen set, once."""
    stored = _stored(context, "reveal")
    party, hellos = client_id(context), _hellos(stored)
    allow, where = allow_list(config, context), domain(config, context)
    commitments: dict[str, bytes] = {}
    for i in range(_Ceremony.take(content).parties):
        record = need_record(content, f"commit-{i:04d}", ConfigRecord)
        committer, commitment = _config(record, "party", str), _config(record, "commitment", bytes)
        envelope = SignedEnvelope.take(content, f"commit-{i:04d}-signed")
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=2,
                         client_id=committer, payload_sha256=payload_digest(commitment_chunks(committer, commitment)))
        if committer in commitments:
            raise UpdateRejected(f"party {committer!r} committed twice")
        commitments[committer] = commitment
    set_digest = check_commitments(party, stored.commitment, commitments, hellos)
    if stored.commitment_set and stored.commitment_set != set_digest:  # a second set could hold a rogue
        raise UpdateRejected("this device revealed its deal to another commitment set already")  # key made from ours
    stored = dataclasses.replace(stored, commitment_set=set_digest,
                                 commitments=tuple(commitments[p] for p in sorted(commitments)))
    stored.keep(context)
    dealt = _own_deal(stored, context)
    reply = RecordDict({"deal": ArrayRecord({"public-share": Array(dealt.public_share)}),
                        "sealed": ConfigRecord({"recipients": sorted(dealt.sealed),
                                                "shares": [dealt.sealed[r] for r in sorted(dealt.sealed)]})})
    chunks = deal_reveal_chunks(party, dealt.public_share, sealed_hashes(dealt.sealed), set_digest)
    return sign_statement(reply, chunks, KEYGEN_TAG, 3, config, context)


def keygen_finish(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 4: check every deal against its commitment and the commitment set this device revealed to, open the
    shares sealed to this party, and sign the key statement of the joint key this device computed itself; or,
    if a share does not open, complain about its dealer (revealing this attempt's exchange key, see judge)."""
    stored = _stored(context, "finish")
    if not stored.commitment_set:
        raise UpdateRejected("a finish request before this device revealed its deal")
    party, hellos = client_id(context), _hellos(stored)
    committed = dict(zip(stored.parties, stored.commitments))
    allow, where = allow_list(config, context), domain(config, context)
    deals: dict[str, tuple[np.ndarray, bytes]] = {}
    for i in range(_Ceremony.take(content).parties):
        meta = need_record(content, f"deal-{i:04d}-sealed", ConfigRecord)
        dealer, mine = meta["party"], meta["for-you"]
        recipients, hashes = list(meta["recipients"]), list(meta["hashes"])  # type: ignore[arg-type]
        if not isinstance(dealer, str) or not isinstance(mine, bytes) or dealer not in hellos or dealer in deals:
            raise UpdateRejected(f"deal {i} names no party of this ceremony, or one twice")
        by_recipient = dict(zip(recipients, hashes))
        if by_recipient.get(party) != hashlib.sha256(mine).digest() or set(by_recipient) != set(hellos):
            raise UpdateRejected(f"the deal of {dealer!r} does not cover this party's share as sent")
        public = need_record(content, f"deal-{i:04d}", ArrayRecord)["public-share"].numpy()
        if deal_commitment(dealer, public, by_recipient) != committed[dealer]:
            raise UpdateRejected(f"the deal of {dealer!r} is not the one it committed to")
        envelope = SignedEnvelope.take(content, f"deal-{i:04d}-signed")
        chunks = deal_reveal_chunks(dealer, public, by_recipient, stored.commitment_set)
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=3,
                         client_id=dealer, payload_sha256=payload_digest(chunks))
        deals[dealer] = (public, mine)
    secrets = PartySecrets.from_bytes(stored.secrets, PARAMS)
    outcome = finish(PARAMS, party, secrets, hellos, deals, stored.threshold)
    CeremonyState.forget(context)  # s_i is no longer needed: only the threshold share stays
    if isinstance(outcome, Complaint):
        reply = RecordDict({"complaint": ConfigRecord({"dealer": outcome.dealer,
                                                       "exchange-private": outcome.exchange_private})})
        return sign_statement(reply, outcome.chunks(), KEYGEN_TAG, 5, config, context)
    statement = KeyStatement(outcome.public_key.digest, outcome.threshold, tuple(sorted(outcome.points)),
                             stored.weight_scale, stored.first_round, stored.terms())
    PendingKey.of(outcome, statement).keep(context)
    reply = RecordDict({"key": ConfigRecord({"statement": statement.to_bytes()})})
    return sign_statement(reply, statement.chunks(), KEY_TAG, 0, config, context)


def keygen_confirm(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 5: the key statement with every holder's signature. Only if it is this device's own statement and every
    holder named signed it does the device start using the key (encrypting, decrypting, co-signing)."""
    pending = PendingKey.recall(context)
    record = get_record(content, "key-statement", ConfigRecord)
    if pending is None or record is None:
        raise UpdateRejected("a confirm request without a key this device signed")
    try:
        signed = SignedKeyStatement.from_bytes(_config(record, "statement", bytes), _config(record, "signatures", bytes))
        if signed.statement.to_bytes() != pending.statement:
            raise UpdateRejected("the key statement to confirm is not the one this device signed")
        allow, where = allow_list(config, context), domain(config, context)
        signed.verify({h: allow.key_for(h) for h in signed.statement.holders}, where.chain_id, where.contract,
                      where.genesis, where.run_id, federation_size(config, context, len(allow.keys)),
                      client_policy(config, context).max_capture_risk)
    except LedgerError as exc:
        raise UpdateRejected(f"the key statement is not signed by all its holders: {exc}") from exc
    prior = HeldKey.recall(context)  # a new key in the same run keeps the rounds' log: re-keying never buys a
    log = (prior.rounds, prior.sums, prior.repeats) if prior else ((), (), ())  # second sum of a round
    HeldKey(pending.party, pending.statement, pending.p0, pending.a, pending.share, *log, decryptions=0).keep(context)
    PendingKey.forget(context)
    JoinedKey.forget(context)
    return RecordDict({"confirmed": ConfigRecord({"key-sha256": signed.statement.sha256})})
