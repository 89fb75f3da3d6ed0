"""A device's part in drawing the key committee (ledger.committee) and, outside the committee, in joining its key.

    commit   draw a fresh secret for this draw (numbers only go up) and answer its commitment
    reveal   given the frozen list: if it holds this device's commitment once, reveal the secret, signed with the
             list's digest, to that list only
    check    (before dealing, as a holder; before encrypting, as a contributor) the transcript's reveals verify,
             the holders are exactly the committee its seed picks, and the capture risk under this device's own
             assumption, times the draws it took part in, is within its policy
    join     a contributor keeps the joint public key whose digest every holder signed, and encrypts under it
"""

from __future__ import annotations

import dataclasses
import secrets

from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fedproof.base.records import get_record
from fedproof.base.errors import UpdateRejected
from fedproof.core.config import RunConfig
from fedproof.core.protocol import DRAW_KEY, PUBLIC_KEY_KEY, TRANSCRIPT_KEY
from fl_client.policy import client_policy, federation_size
from fl_client.state import count_draw
from fl_client.signing import allow_list, client_id, domain, sign_statement
from fl_client.threshold.shared import PARAMS, _config
from fl_client.threshold.state import DrawState, JoinedKey
from ledger.committee import (
    DRAW_STEP,
    MAX_CANDIDATES,
    Draw,
    DrawError,
    check_risk,
    commitment,
    digest_of,
    list_entry,
    reveal_chunks,
)
from ledger.merkle import verify_proof
from ledger.errors import LedgerError
from ledger.key_statement import SignedKeyStatement
from ledger.signing import KEYGEN_TAG, CommitteeTerms
from privacy.threshold import JointPublicKey, common_random_polynomial


def draw_commit(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """A fresh secret for draw ``number`` (higher than any this device committed to in the run), kept with the
    count of draws it took part in over its lifetime; its commitment answered."""
    record = get_record(content, DRAW_KEY, ConfigRecord)
    if record is None:
        raise UpdateRejected("not a committee-draw message")
    number = _config(record, "number", int)
    prior = DrawState.recall(context)
    if number < 1 or (prior is not None and number <= prior.number):
        raise UpdateRejected(f"draw {number}: this device committed to draw {prior.number if prior else 0} already; "
                             "a draw's secret is drawn once")
    secret = secrets.token_bytes(32)
    try:
        draws = count_draw(context, config.run_dir, client_id(context))
    except (OSError, ValueError) as exc:
        raise UpdateRejected(f"this device cannot count its draws ({exc}): it takes part in none") from exc
    DrawState(number, secret, draws).keep(context)
    me = client_id(context)
    return RecordDict({DRAW_KEY: ConfigRecord({"number": number, "party": me, "commitment": commitment(me, secret)})})


def draw_reveal(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Reveal this draw's secret to the frozen list, if the list's Merkle root covers this device's commitment (its
    proof says so); to one list only."""
    record = get_record(content, DRAW_KEY, ConfigRecord)
    if record is None:
        raise UpdateRejected("not a committee-draw message")
    number, count, root = _config(record, "number", int), _config(record, "count", int), _config(record, "root", bytes)
    proof = record.get("proof")
    state = DrawState.recall(context)
    if state is None or state.number != number:
        raise UpdateRejected(f"draw {number}: this device holds no secret of that draw")
    if not 1 <= count <= MAX_CANDIDATES or not isinstance(proof, list) or len(proof) > 64 or \
            not all(isinstance(p, bytes) and len(p) == 32 for p in proof):
        raise UpdateRejected("a draw's list has 1..100,000 entries and a proof of at most 64 hashes")
    me = client_id(context)
    try:  # the frozen list holds this device's own commitment
        verify_proof(root, list_entry(me, commitment(me, state.secret)), proof)
    except LedgerError as exc:
        raise UpdateRejected("the draw's list does not hold this device's commitment") from exc
    digest = digest_of(count, root)
    if state.revealed_to not in (b"", digest):
        raise UpdateRejected(f"draw {number}: this device revealed its secret to another list already")
    dataclasses.replace(state, revealed_to=digest).keep(context)
    reply = RecordDict({DRAW_KEY: ConfigRecord({"number": number, "secret": state.secret})})
    return sign_statement(reply, reveal_chunks(number, digest, state.secret), KEYGEN_TAG, DRAW_STEP, config, context)


def check_committee(draw: Draw, holders: tuple[str, ...], threshold: int, terms: CommitteeTerms, config: RunConfig,
                    context: Context) -> None:
    """Raise :class:`UpdateRejected` unless ``holders`` are the committee ``draw`` picks, ``terms`` are the draw's,
    and the risk that the accomplices this device assumes hold ``threshold`` of its seats is within its policy."""
    try:
        draw.verify(allow_list(config, context), domain(config, context))
        if (terms.draw, terms.candidates, terms.seed) != (draw.number, len(draw.candidates), draw.seed):
            raise DrawError("the key's terms are not the draw's (number, candidates or seed)")
        if tuple(holders) != draw.committee(len(holders)):
            raise DrawError("the key's holders are not the committee the draw picks")
        policy = client_policy(config, context)
        registered = federation_size(config, context, len(allow_list(config, context).keys))
        assumed = policy.committee_colluders(registered)
        if terms.colluders < assumed:
            raise DrawError(f"the holders assume {terms.colluders} colluders; this device assumes {assumed} of "
                            f"{registered}")
        state = DrawState.recall(context)
        check_risk(terms.candidates, terms.colluders, len(holders), threshold,
                   max(terms.draw, state.draws if state else 0), policy.max_capture_risk)
    except LedgerError as exc:
        raise UpdateRejected(f"committee: {exc}") from exc


def key_join(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """A contributor outside the committee: keep the joint public key, once the statement is signed by every
    holder, the holders are the committee the draw picks, and the key's digest is the one they signed."""
    record = get_record(content, "key-statement", ConfigRecord)
    transcript = get_record(content, TRANSCRIPT_KEY, ConfigRecord)
    key = get_record(content, PUBLIC_KEY_KEY, ArrayRecord)
    if record is None or transcript is None or key is None:
        raise UpdateRejected("a key join carries the signed key statement, the draw and the public key")
    try:
        signed = SignedKeyStatement.from_bytes(_config(record, "statement", bytes), _config(record, "signatures", bytes))
        allow, where = allow_list(config, context), domain(config, context)
        policy = client_policy(config, context)
        signed.verify({h: allow.key_for(h) for h in signed.statement.holders}, where.chain_id, where.contract,
                      where.genesis, where.run_id, federation_size(config, context, len(allow.keys)),
                      policy.max_capture_risk)
    except LedgerError as exc:
        raise UpdateRejected(f"the key statement does not verify: {exc}") from exc
    statement = signed.statement
    if statement.committee.draw == 0:
        raise UpdateRejected("a key join is for a committee's key; this device holds a share of whole-federation keys")
    try:
        draw = Draw.from_record(transcript)
    except DrawError as exc:
        raise UpdateRejected(f"committee: {exc}") from exc
    check_committee(draw, statement.holders, statement.threshold, statement.committee, config, context)
    try:
        p0, seed = key["p0"].numpy(), _config(record, "crp-seed", bytes)
        public = JointPublicKey(PARAMS, p0, common_random_polynomial(PARAMS, seed))
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise UpdateRejected(f"the joint public key is malformed: {exc}") from exc
    if public.digest != statement.public_key_sha256:  # p0 and a (from its seed) are the key every holder signed
        raise UpdateRejected("the joint public key is not the one the holders signed")
    JoinedKey(statement.to_bytes(), seed).keep(context)
    return RecordDict({"confirmed": ConfigRecord({"key-sha256": statement.sha256})})
