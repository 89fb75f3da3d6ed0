"""A client's part in threshold HE: the key ceremony's five steps, committing to and revealing its encrypted update,
and the checks it runs before it helps decrypt anything or co-signs a model.

Everything the device keeps for the run (its ceremony secrets and its deal, then its key share, the joint public
key it computed itself and the key statement every holder signed, its committed ciphertexts, and which sums it has
helped decrypt) lives in the node's ``Context.state``: on the device, never sent to the server. Every statement
from another party (hellos, commitments, deals, update leaves, reveals, partial decryptions) is checked against
the device's own copy of the allow-list before it is used, and every parameter of the update rule (the threshold,
the holders, the weight scale) comes from the key statement the device itself signed, never from a message.

The checks are written against the server together with up to t - 1 accomplice clients (README, "Security
argument"). A decryptor refuses, with a reason code, any request that is not: at least ``min-contributors``
distinct allowed clients' signed updates of this run and round (the run's number, raised to the device's
policy), each in the round's frozen set of commitments and revealed to exactly that set (so no leaf of the sum
was chosen after another was seen); ciphertexts that hash to what each signed; a sum the device recomputed
itself and that matches what it is asked to decrypt; a decryptor set of exactly the key's threshold that
includes it; the first sum of the round (a repeat of the same sum with another decryptor set is allowed twice,
for a member that dropped out); and within the key's budget of decryptions. It then decrypts only the sum
re-randomized by an encryption of zero that a hash of the request fixes, never a ciphertext component anyone
chose.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import FedproofError, Reason, UpdateRejected
from fedproof.core.protocol import (
    CEREMONY_KEY,
    CIPHERTEXTS_KEY,
    COSIGN_KEY,
    DECRYPTION_KEY,
    PARTIAL_KEY,
    REFUSED,
    ClientReport,
    CosignRequest,
    DecryptionRequest,
    EncryptedPayload,
    RevealRequest,
    SignedEnvelope,
    hello_record,
    pack_ciphertexts,
    partial_chunks,
    reveal_chunks,
    take_hello,
    unpack_ciphertexts,
)
from fl_client.policy import client_policy, federation_size
from fl_client.signing import allow_list, client_id, domain, sign_statement
from ledger.errors import LedgerError, UpdateVerificationError
from ledger.key_statement import KeyStatement, SignedKeyStatement
from ledger.merkle import MerkleTree
from fedproof.core.weights import apply_mean, hash_model, num_values
from ledger.signing import (
    KEY_TAG,
    KEYGEN_TAG,
    MODEL_TAG,
    PARTIAL_TAG,
    REVEAL_TAG,
    UPDATE_TAG,
    leaf_bytes,
    model_statement_chunks,
    payload_digest,
)
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import CiphertextError, PrivacyError
from privacy.keygen import (
    Complaint,
    Deal,
    Hello,
    KeyHolding,
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
from privacy.threshold import (
    JointPublicKey,
    ThresholdParams,
    check_partial,
    fuse,
    majority,
    partial_decryption,
    rerandomize,
    rerandomizer_seed,
    sum_ciphertexts,
    sum_digest,
)

PARAMS = ThresholdParams()
CEREMONY_STATE, DEAL_ARRAYS = "fedproof.ceremony", "fedproof.ceremony-deal"
PENDING_ARRAYS, PENDING_STATE = "fedproof.pending-key", "fedproof.pending-threshold"
"""A key this device computed and signed, not yet confirmed: it encrypts and decrypts under a key only once
every holder signed the same statement (a complaint by anyone, or a missing signature, leaves it unused)."""
KEY_ARRAYS, KEY_STATE = "fedproof.threshold-key", "fedproof.threshold"
UPLOAD_STATE = "fedproof.upload"
"""The ciphertexts this device committed to in its latest train reply, until it reveals them."""
VERIFIED_SUM, VERIFIED_C0 = "fedproof.verified-sum", "fedproof.verified-sum-c0"
"""The sum this device last checked and helped decrypt (what the leaves said, and the re-randomized sum's c0): a
co-signing request from the same decryption may then omit the leaves, and the device uses what it verified."""
MAX_REPEATS = 3
MAX_WEIGHT_SCALE = 2**40
"""Largest weight scale W a device signs: sums of up to a trillion examples (W only divides what is encrypted)."""


class DecryptionRefused(FedproofError):
    """A key holder refuses a decryption or co-signing request: the check it failed is its ``reason``."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.code = reason.value


def _config(record: ConfigRecord, key: str, kind: type):
    value = record.get(key)
    if type(value) is not kind:
        raise UpdateRejected(f"key-ceremony message: {key!r} must be {kind.__name__}")
    return value


# ----------------------------------------------------------------------------------------- the ceremony

@dataclass(frozen=True)
class _Ceremony:
    """What the server proposes for the key (checked here; signed in the key statement if the device agrees)."""

    threshold: int
    parties: int
    weight_scale: int
    first_round: int

    @classmethod
    def take(cls, content: RecordDict) -> _Ceremony:
        record = content.config_records.get(CEREMONY_KEY)
        if record is None:
            raise UpdateRejected("not a key-ceremony message")
        ceremony = cls(*(_config(record, k, int) for k in ("threshold", "parties", "weight-scale", "first-round")))
        if not 1 <= ceremony.weight_scale <= MAX_WEIGHT_SCALE or ceremony.first_round < 1:
            raise UpdateRejected(f"a weight scale outside 1..{MAX_WEIGHT_SCALE} or a first round below 1")
        return ceremony


def keygen_hello(config: RunConfig, context: Context) -> RecordDict:
    """Step 1: fresh secrets for this attempt (a new hello forgets any earlier attempt's), announced signed."""
    party = client_id(context)
    announced, secrets = hello(PARAMS, party)
    for key in (CEREMONY_STATE, DEAL_ARRAYS, PENDING_ARRAYS, PENDING_STATE):
        if key in context.state:
            del context.state[key]
    context.state[CEREMONY_STATE] = ConfigRecord({"secrets": secrets.to_bytes()})
    content = RecordDict({"hello": hello_record(party, announced.contribution, announced.exchange_key)})
    return sign_statement(content, announced.chunks(), KEYGEN_TAG, 1, config, context)


def _verified_hellos(content: RecordDict, config: RunConfig, context: Context, count: int) -> dict[str, Hello]:
    allow, where = allow_list(config, context), domain(config, context)
    hellos: dict[str, Hello] = {}
    for i in range(count):
        party, contribution, exchange_key = take_hello(content.config_records[f"hello-{i:04d}"])
        announced = Hello(party, contribution, exchange_key)
        envelope = SignedEnvelope.take(content, f"hello-{i:04d}-signed")
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=1,
                         client_id=party, payload_sha256=payload_digest(announced.chunks()))
        if party in hellos:
            raise UpdateRejected(f"party {party!r} announced twice")
        hellos[party] = announced
    federation = federation_size(config, context, len(allow.keys))
    if len(hellos) < majority(federation):  # a server must not shrink the key to itself and its accomplices
        raise UpdateRejected(f"a key of {len(hellos)} parties: this device joins only keys held by a majority of "
                             f"the {federation} registered clients")
    return hellos


def keygen_commit(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 2: check everyone's hello, make this party's deal and keep it; announce only its commitment."""
    ceremony = _Ceremony.take(content)
    hellos = _verified_hellos(content, config, context, ceremony.parties)
    stored = context.state.config_records.get(CEREMONY_STATE)
    if stored is None or "parties" in stored:  # dealing one secret twice, to other sets, could leak it
        raise UpdateRejected("a commit request before this device's hello, or a second one for the same secret")
    secrets = PartySecrets.from_bytes(stored["secrets"], PARAMS)  # type: ignore[arg-type]
    party = client_id(context)
    dealt = deal(PARAMS, party, secrets, hellos, ceremony.threshold)
    commitment = deal_commitment(party, dealt.public_share, sealed_hashes(dealt.sealed))
    parties = sorted(hellos)
    recipients = sorted(dealt.sealed)
    context.state[CEREMONY_STATE] = ConfigRecord({
        "secrets": secrets.to_bytes(), "threshold": ceremony.threshold, "weight-scale": ceremony.weight_scale,
        "first-round": ceremony.first_round, "parties": parties, "commitment": commitment,
        "contributions": [hellos[p].contribution for p in parties],
        "exchange-keys": [hellos[p].exchange_key for p in parties],
        "recipients": recipients, "sealed": [dealt.sealed[r] for r in recipients]})
    context.state[DEAL_ARRAYS] = ArrayRecord({"public-share": Array(dealt.public_share)})
    reply = RecordDict({"commitment": ConfigRecord({"commitment": commitment})})
    return sign_statement(reply, commitment_chunks(party, commitment), KEYGEN_TAG, 2, config, context)


def _stored(context: Context, step: str) -> ConfigRecord:
    stored = context.state.config_records.get(CEREMONY_STATE)
    if stored is None or "commitment" not in stored:
        raise UpdateRejected(f"a {step} request before this device committed to its deal")
    return stored


def _hellos(stored: ConfigRecord) -> dict[str, Hello]:
    return {p: Hello(p, c, k) for p, c, k in zip(stored["parties"], stored["contributions"],  # type: ignore
                                                  stored["exchange-keys"])}  # type: ignore[call-overload]


def _own_deal(stored: ConfigRecord, context: Context) -> Deal:
    sealed = dict(zip(stored["recipients"], stored["sealed"]))  # type: ignore[arg-type]
    return Deal(client_id(context), context.state.array_records[DEAL_ARRAYS]["public-share"].numpy(), sealed)


def keygen_reveal(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 3: given every party's signed commitment, reveal this party's deal to that frozen set, once."""
    stored = _stored(context, "reveal")
    party, hellos = client_id(context), _hellos(stored)
    allow, where = allow_list(config, context), domain(config, context)
    commitments: dict[str, bytes] = {}
    for i in range(_Ceremony.take(content).parties):
        record = content.config_records[f"commit-{i:04d}"]
        committer, commitment = _config(record, "party", str), _config(record, "commitment", bytes)
        envelope = SignedEnvelope.take(content, f"commit-{i:04d}-signed")
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=2,
                         client_id=committer, payload_sha256=payload_digest(commitment_chunks(committer, commitment)))
        if committer in commitments:
            raise UpdateRejected(f"party {committer!r} committed twice")
        commitments[committer] = commitment
    set_digest = check_commitments(party, stored["commitment"], commitments, hellos)  # type: ignore[arg-type]
    if "commitment-set" in stored and stored["commitment-set"] != set_digest:  # a second set could hold a rogue
        raise UpdateRejected("this device revealed its deal to another commitment set already")  # key made from ours
    stored["commitment-set"] = set_digest
    stored["commitments"] = [commitments[p] for p in sorted(commitments)]
    context.state[CEREMONY_STATE] = stored
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
    if "commitment-set" not in stored:
        raise UpdateRejected("a finish request before this device revealed its deal")
    party, hellos = client_id(context), _hellos(stored)
    committed = dict(zip(stored["parties"], stored["commitments"]))  # type: ignore[arg-type]
    allow, where = allow_list(config, context), domain(config, context)
    deals: dict[str, tuple[np.ndarray, bytes]] = {}
    for i in range(_Ceremony.take(content).parties):
        meta = content.config_records[f"deal-{i:04d}-sealed"]
        dealer, mine = meta["party"], meta["for-you"]
        recipients, hashes = list(meta["recipients"]), list(meta["hashes"])  # type: ignore[arg-type]
        if not isinstance(dealer, str) or not isinstance(mine, bytes) or dealer not in hellos or dealer in deals:
            raise UpdateRejected(f"deal {i} names no party of this ceremony, or one twice")
        by_recipient = dict(zip(recipients, hashes))
        if by_recipient.get(party) != hashlib.sha256(mine).digest() or set(by_recipient) != set(hellos):
            raise UpdateRejected(f"the deal of {dealer!r} does not cover this party's share as sent")
        public = content.array_records[f"deal-{i:04d}"]["public-share"].numpy()
        if deal_commitment(dealer, public, by_recipient) != committed[dealer]:
            raise UpdateRejected(f"the deal of {dealer!r} is not the one it committed to")
        envelope = SignedEnvelope.take(content, f"deal-{i:04d}-signed")
        chunks = deal_reveal_chunks(dealer, public, by_recipient, stored["commitment-set"])  # type: ignore[arg-type]
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=3,
                         client_id=dealer, payload_sha256=payload_digest(chunks))
        deals[dealer] = (public, mine)
    secrets = PartySecrets.from_bytes(stored["secrets"], PARAMS)  # type: ignore[arg-type]
    outcome = finish(PARAMS, party, secrets, hellos, deals, int(stored["threshold"]))  # type: ignore[call-overload]
    for key in (CEREMONY_STATE, DEAL_ARRAYS):  # s_i is no longer needed: only the threshold share stays
        del context.state[key]
    if isinstance(outcome, Complaint):
        reply = RecordDict({"complaint": ConfigRecord({"dealer": outcome.dealer,
                                                       "exchange-private": outcome.exchange_private})})
        return sign_statement(reply, outcome.chunks(), KEYGEN_TAG, 5, config, context)
    statement = KeyStatement(outcome.public_key.digest, outcome.threshold, tuple(sorted(outcome.points)),
                             int(stored["weight-scale"]), int(stored["first-round"]))  # type: ignore[call-overload]
    _keep(context, outcome, statement, PENDING_ARRAYS, PENDING_STATE)
    reply = RecordDict({"key": ConfigRecord({"statement": statement.to_bytes()})})
    return sign_statement(reply, statement.chunks(), KEY_TAG, 0, config, context)


def keygen_confirm(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 5: the key statement with every holder's signature. Only if it is this device's own statement and every
    holder named signed it does the device start using the key (encrypting, decrypting, co-signing)."""
    pending, arrays = context.state.config_records.get(PENDING_STATE), context.state.array_records.get(PENDING_ARRAYS)
    record = content.config_records.get("key-statement")
    if pending is None or arrays is None or record is None:
        raise UpdateRejected("a confirm request without a key this device signed")
    try:
        signed = SignedKeyStatement.from_bytes(_config(record, "statement", bytes), _config(record, "signatures", bytes))
        if signed.statement.to_bytes() != pending["statement"]:
            raise UpdateRejected("the key statement to confirm is not the one this device signed")
        allow, where = allow_list(config, context), domain(config, context)
        signed.verify({h: allow.key_for(h) for h in signed.statement.holders}, where.chain_id, where.contract,
                      where.genesis, where.run_id, federation_size(config, context, len(allow.keys)))
    except LedgerError as exc:
        raise UpdateRejected(f"the key statement is not signed by all its holders: {exc}") from exc
    prior = context.state.config_records.get(KEY_STATE)  # a new key in the same run keeps the rounds' log:
    log = {k: list(prior[k]) for k in ("rounds", "sums", "repeats")} if prior else {  # type: ignore[arg-type]
        "rounds": [], "sums": [], "repeats": []}  # re-keying never buys a second sum of a round
    context.state[KEY_ARRAYS] = arrays
    context.state[KEY_STATE] = ConfigRecord({**dict(pending), **log, "decryptions": 0})
    for key in (PENDING_ARRAYS, PENDING_STATE):
        del context.state[key]
    return RecordDict({"confirmed": ConfigRecord({"key-sha256": signed.statement.sha256})})


def _keep(context: Context, holding: KeyHolding, statement: KeyStatement, arrays_key: str, state_key: str) -> None:
    p0, a = holding.public_key.to_arrays()
    context.state[arrays_key] = ArrayRecord({"p0": Array(p0), "a": Array(a), "share": Array(holding.share)})
    context.state[state_key] = ConfigRecord({"party": holding.party, "statement": statement.to_bytes()})


def key_statement(context: Context) -> KeyStatement:
    meta = context.state.config_records.get(KEY_STATE)
    if meta is None:
        raise PrivacyError("this device holds no confirmed share of the run's threshold key (the key ceremony did "
                           "not complete with it, or not every holder signed the key)")
    return KeyStatement.from_bytes(meta["statement"])  # type: ignore[arg-type]


def key_holding(context: Context) -> KeyHolding:
    statement = key_statement(context)
    arrays, meta = context.state.array_records.get(KEY_ARRAYS), context.state.config_records[KEY_STATE]
    if arrays is None:
        raise PrivacyError("this device's key share is missing from its state")
    a = arrays["a"].numpy()
    pk = JointPublicKey(PARAMS, arrays["p0"].numpy(), [a[0], a[1]])
    if pk.digest != statement.public_key_sha256:
        raise PrivacyError("this device's stored key does not match its key statement")
    return KeyHolding(str(meta["party"]), statement.points, statement.threshold, pk, arrays["share"].numpy())


# ----------------------------------------------------------------------------------------- the update

def encrypt_update(delta: np.ndarray, weight: int, context: Context) -> EncryptedPayload:
    """Ciphertexts of ``(weight / W) * delta`` under the joint key this device checked, W from the key statement
    every holder signed (co-signers multiply back by the same W: nobody's message sets it)."""
    scale = key_statement(context).weight_scale
    if not 1 <= weight <= scale:
        raise PrivacyError(f"weight {weight} outside 1..{scale} (the key's weight scale): not encrypting")
    chunks = key_holding(context).public_key.encrypt(delta * (weight / scale))
    return EncryptedPayload(tuple(chunks), delta.size)


def withhold(content: RecordDict, server_round: int, context: Context) -> RecordDict:
    """Commit, don't send: after the update is signed (its leaf covers the ciphertexts' digest), the ciphertexts
    leave the reply and stay on the device until the round's commitments are frozen (:func:`reveal_update`)."""
    payload = EncryptedPayload.take(content)
    envelope = SignedEnvelope.take(content)
    context.state[UPLOAD_STATE] = ConfigRecord({"round": server_round, "leaf-signature": envelope.signature,
                                                "num-values": payload.num_values, "revealed-to": b""})
    context.state[UPLOAD_STATE + "-ciphertexts"] = pack_ciphertexts(payload.chunks)
    del content[CIPHERTEXTS_KEY]
    return content


def reveal_update(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    """Reveal this round's committed ciphertexts, signed over the frozen set's root, if that set holds this device's
    own commitment among at least its floor of distinct allowed clients' commitments for this round and parent,
    and this device has revealed to no other set this round."""
    return _refusal_or(_reveal_update, content, config, server_round, context, min_contributors)


def _reveal_update(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                   min_contributors: int) -> RecordDict:
    upload, packed = context.state.config_records.get(UPLOAD_STATE), context.state.array_records.get(
        UPLOAD_STATE + "-ciphertexts")
    if upload is None or packed is None or upload["round"] != server_round:
        raise DecryptionRefused(Reason.NOTHING_COMMITTED, f"this device committed to no update in round {server_round}")
    try:
        request = RevealRequest.take(content)
    except UpdateRejected as exc:
        raise DecryptionRefused(Reason.MALFORMED, str(exc)) from exc
    me = client_id(context)
    own = [e for e in request.committed if e.fields.client_id == me]
    if len(own) != 1 or own[0].signature != upload["leaf-signature"]:
        raise DecryptionRefused(Reason.NOT_IN_SET, "the frozen set does not hold this device's own commitment once")
    root, _ = _frozen(request.committed, _Peers.of(config, context, min_contributors), server_round,
                      own[0].fields.parent_model_hash)
    if upload["revealed-to"] not in (b"", root):
        raise DecryptionRefused(Reason.SECOND_SET, "this device revealed its update to another set in this round")
    upload["revealed-to"] = root
    context.state[UPLOAD_STATE] = upload
    chunks = unpack_ciphertexts(packed)
    reply = EncryptedPayload(chunks, int(upload["num-values"])).put(RecordDict())  # type: ignore[call-overload]
    return sign_statement(reply, reveal_chunks(root), REVEAL_TAG, server_round, config, context)


@dataclass(frozen=True)
class _Peers:
    """What one request is checked against, read once from the device's own files: its allow-list (afresh: a
    revocation counts at once), where its statements belong, and the fewest contributors it accepts in a sum."""

    allow: AllowList
    where: Domain
    floor: int

    @classmethod
    def of(cls, config: RunConfig, context: Context, min_contributors: int) -> _Peers:
        return cls(allow_list(config, context), domain(config, context),
                   client_policy(config, context).contributors_floor(min_contributors))


def _frozen(committed: tuple[SignedEnvelope, ...], peers: _Peers, server_round: int, parent: bytes
            ) -> tuple[bytes, dict[bytes, bytes]]:
    """The root of a frozen set of commitments after checking each (distinct allowed clients, this round, one
    parent, at least the device's floor), and its members: leaf bytes -> the payload digest they commit to."""
    allow, where, floor = peers.allow, peers.where, peers.floor
    clients = {e.fields.client_id for e in committed}
    if len(clients) != len(committed) or len(committed) < floor:
        raise DecryptionRefused(Reason.TOO_FEW_CONTRIBUTORS, f"{len(committed)} commitments from {len(clients)} distinct "
                                                        f"clients; this device requires {floor}")
    if len(committed) > len(allow.keys):
        raise DecryptionRefused(Reason.TOO_MANY_LEAVES, "more commitments than registered clients")
    members = {}
    for envelope in committed:
        f = envelope.fields
        try:
            key = verify_statement(allow, where, f, envelope.signature, tag=UPDATE_TAG, round=server_round,
                                   client_id=f.client_id, payload_sha256=f.payload_sha256)
        except UpdateVerificationError as exc:
            raise DecryptionRefused(Reason.BAD_LEAF, str(exc)) from exc
        if f.parent_model_hash != parent:
            raise DecryptionRefused(Reason.MIXED_PARENTS, "the commitments were trained from different models: the "
                                                     "server sent clients different models in one round")
        members[leaf_bytes(f, key, envelope.signature)] = f.payload_sha256
    return MerkleTree(list(members)).root, members


# ----------------------------------------------------------------------------------------- decrypting

def decrypt_share(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    """A partial decryption of the round's re-randomized sum, signed, or a refusal with the check that failed."""
    return _refusal_or(_decrypt_share, content, config, server_round, context, min_contributors)


def _refusal_or(step, content: RecordDict, config: RunConfig, server_round: int, context: Context,
                min_contributors: int) -> RecordDict:
    """``step``'s signed reply, or the refusal (with its check's code) that the server records."""
    try:
        return step(content, config, server_round, context, min_contributors)
    except DecryptionRefused as exc:
        report = ClientReport(client_id(context), REFUSED, reason=str(exc))
        return RecordDict({"client": report.to_record()})


def _decrypt_share(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                   min_contributors: int) -> RecordDict:
    holding = _holding(context)
    try:
        request = DecryptionRequest.take(content)
    except UpdateRejected as exc:
        raise DecryptionRefused(Reason.MALFORMED, str(exc)) from exc
    decryptors = _decryptor_set(request, holding)
    if holding.party not in decryptors:
        raise DecryptionRefused(Reason.BAD_DECRYPTORS, "this device is not in the decryptor set it is asked to join")
    peers = _Peers.of(config, context, min_contributors)
    checked = _verified_sum(request, peers, server_round, context, holding)
    assert checked.total is not None
    _log_decryption(context, server_round, checked.digest, checked.total.shape[0])
    _remember(context, server_round, decryptors, checked)
    points = [holding.points[d] for d in decryptors]
    # the flooding covers the noise of up to every registered client's ciphertext plus the re-randomizer's
    std = PARAMS.flooding_std(len(holding.points), len(peers.allow.keys) + 1)
    partial = partial_decryption(PARAMS, holding.share, holding.x, points, checked.total, std)
    reply = RecordDict({PARTIAL_KEY: ArrayRecord({PARTIAL_KEY: Array(partial)}),
                        DECRYPTION_KEY: ConfigRecord({"sum-sha256": checked.digest, "merkle-root": checked.root})})
    return sign_statement(reply, partial_chunks(checked.digest, checked.root, decryptors,
                                                partial.astype("<u8").tobytes()),
                          PARTIAL_TAG, server_round, config, context)


def _holding(context: Context) -> KeyHolding:
    try:
        return key_holding(context)
    except PrivacyError as exc:
        raise DecryptionRefused(Reason.NO_KEY, str(exc)) from exc


def _decryptor_set(request: DecryptionRequest, holding: KeyHolding) -> tuple[str, ...]:
    decryptors = request.decryptors
    if (len(decryptors) != holding.threshold or len(set(decryptors)) != len(decryptors)
            or not set(decryptors) <= set(holding.points)):
        raise DecryptionRefused(Reason.BAD_DECRYPTORS, f"decryptors {list(decryptors)[:8]} are not {holding.threshold} "
                                                  "distinct key holders")
    return decryptors


@dataclass(frozen=True)
class CheckedSum:
    """A round's sum as this device recomputed it from the signed, revealed leaves, re-randomized for this request,
    and what the leaves say."""

    total: np.ndarray | None
    """The re-randomized summed ciphertexts (None when recalled from an earlier check: only ``c0`` was kept)."""
    c0: np.ndarray
    """``total[:, 0]``: all that fusing partial decryptions needs of the sum."""
    digest: bytes
    """Of the sum of the leaves as signed (before re-randomization: what the server can name)."""
    root: bytes
    leaves: int
    examples: int
    parent: bytes
    """The model every leaf signed it trained from."""


def _verified_sum(request: DecryptionRequest, peers: _Peers, server_round: int, context: Context,
                  holding: KeyHolding) -> CheckedSum:
    """Every leaf signed by a distinct allowed client for this run and round, from one parent model, at least the
    device's floor of them, each in the round's frozen set of commitments and revealed by its signer to that set;
    their ciphertexts summed here, that sum the one the server named, then re-randomized by the encryption of
    zero that a hash of this request fixes."""
    allow, where, floor = peers.allow, peers.where, peers.floor
    if not request.leaves or len(request.reveals) != len(request.leaves) or not request.committed:
        raise DecryptionRefused(Reason.UNREVEALED, "a sum must come with the round's frozen commitments and each "
                                              "leaf's signed reveal")
    parents = {envelope.fields.parent_model_hash for envelope, _ in request.leaves}
    if len(parents) != 1:
        raise DecryptionRefused(Reason.MIXED_PARENTS, "the leaves were trained from different models: the server sent "
                                                 "clients different models in one round")
    parent = parents.pop()
    frozen_root, members = _frozen(request.committed, peers, server_round, parent)
    contributors = {envelope.fields.client_id for envelope, _ in request.leaves}
    if len(contributors) < floor or len(contributors) != len(request.leaves):
        raise DecryptionRefused(Reason.TOO_FEW_CONTRIBUTORS, f"{len(request.leaves)} leaves from {len(contributors)} "
                                                        f"distinct clients; this device requires {floor}")
    leaves = []
    for (envelope, chunks), reveal in zip(request.leaves, request.reveals):
        f = envelope.fields
        try:
            key = verify_statement(allow, where, f, envelope.signature, tag=UPDATE_TAG, round=server_round,
                                   client_id=f.client_id, payload_sha256=payload_digest(chunks))
            verify_statement(allow, where, reveal.fields, reveal.signature, tag=REVEAL_TAG, round=server_round,
                             client_id=f.client_id, payload_sha256=payload_digest(reveal_chunks(frozen_root)))
        except UpdateVerificationError as exc:
            raise DecryptionRefused(Reason.BAD_LEAF, str(exc)) from exc
        leaf = leaf_bytes(f, key, envelope.signature)
        if leaf not in members:
            raise DecryptionRefused(Reason.NOT_COMMITTED, f"the leaf of {f.client_id} is not in the round's frozen set of "
                                                     "commitments: it could have been made after others were seen")
        leaves.append(leaf)
    try:
        total = sum_ciphertexts(PARAMS, [chunks for _, chunks in request.leaves])
    except CiphertextError as exc:
        raise DecryptionRefused(Reason.BAD_CIPHERTEXT, str(exc)) from exc
    digest = sum_digest(total)
    if digest != request.sum_sha256:
        raise DecryptionRefused(Reason.SUM_MISMATCH, "the sum of the signed leaves is not the sum asked to decrypt")
    root = MerkleTree(leaves).root
    seed = rerandomizer_seed(key_statement(context).sha256, server_round, digest, root, request.decryptors)
    total = rerandomize(holding.public_key, total, seed)
    return CheckedSum(total, total[:, 0], digest, root, len(leaves),
                      sum(e.fields.num_examples for e, _ in request.leaves), parent)


def _remember(context: Context, server_round: int, decryptors: tuple[str, ...], checked: CheckedSum) -> None:
    context.state[VERIFIED_SUM] = ConfigRecord({
        "round": server_round, "decryptors": list(decryptors), "sum-sha256": checked.digest,
        "merkle-root": checked.root, "leaves": checked.leaves, "examples": checked.examples,
        "parent": checked.parent})
    context.state[VERIFIED_C0] = ArrayRecord({"c0": Array(np.ascontiguousarray(checked.c0))})


def _remembered_sum(context: Context, server_round: int, request: DecryptionRequest) -> CheckedSum:
    """The sum this device verified when it helped decrypt ``request`` (same round, sum and decryptors)."""
    meta, arrays = context.state.config_records.get(VERIFIED_SUM), context.state.array_records.get(VERIFIED_C0)
    if (meta is None or arrays is None or meta["round"] != server_round or meta["sum-sha256"] != request.sum_sha256
            or list(meta["decryptors"]) != list(request.decryptors)):  # type: ignore[arg-type]
        raise DecryptionRefused(Reason.UNKNOWN_SUM, "a co-signing request without leaves, for a sum this device did not "
                                               "check and help decrypt: send the leaves")
    return CheckedSum(None, arrays["c0"].numpy(), meta["sum-sha256"], meta["merkle-root"],  # type: ignore[arg-type]
                      int(meta["leaves"]), int(meta["examples"]), meta["parent"])  # type: ignore[arg-type]


def _forget_sum(context: Context) -> None:
    for key in (VERIFIED_SUM, VERIFIED_C0):
        if key in context.state:
            del context.state[key]


# ----------------------------------------------------------------------------------------- co-signing

def cosign_model(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                 min_contributors: int) -> RecordDict:
    """A signature of the round's new model hash, after this device fused the t signed partial decryptions
    itself and computed the model from the parent; or a refusal with the check that failed."""
    return _refusal_or(_cosign_model, content, config, server_round, context, min_contributors)


def _cosign_model(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    holding = _holding(context)
    statement = key_statement(context)
    try:
        request = CosignRequest.take(content)
    except UpdateRejected as exc:
        raise DecryptionRefused(Reason.MALFORMED, str(exc)) from exc
    decryptors = _decryptor_set(request.decryption, holding)
    peers = _Peers.of(config, context, min_contributors)
    allow, where = peers.allow, peers.where
    checked = (_verified_sum(request.decryption, peers, server_round, context, holding)
               if request.decryption.leaves else _remembered_sum(context, server_round, request.decryption))
    partials = []
    for party, (envelope, values) in zip(decryptors, request.partials):
        try:
            check_partial(PARAMS, values, checked.c0.shape[0])
            chunks = partial_chunks(checked.digest, checked.root, decryptors, values.astype("<u8").tobytes())
            verify_statement(allow, where, envelope.fields, envelope.signature, tag=PARTIAL_TAG, round=server_round,
                             client_id=party, payload_sha256=payload_digest(chunks))
        except (UpdateVerificationError, CiphertextError) as exc:
            raise DecryptionRefused(Reason.BAD_PARTIAL, f"decryptor {party}: {exc}") from exc
        partials.append(values)
    parent = request.parent
    if hash_model(parent, config.run_id) != checked.parent:
        raise DecryptionRefused(Reason.WRONG_PARENT, "the parent model sent is not the one the leaves trained from")
    values = fuse(PARAMS, checked.c0, partials, num_values(parent))
    if not np.all(np.abs(values) <= PARAMS.max_abs_value * 1.01):
        raise DecryptionRefused(Reason.OUT_OF_RANGE, "the fused sum lies outside the scheme's range")
    scale = statement.weight_scale  # signed by every holder: the server's message has no say in it
    if not 1 <= checked.examples <= scale:
        raise DecryptionRefused(Reason.BAD_WEIGHTS, f"{checked.examples} examples outside 1..{scale} (the key's weight "
                                               "scale)")
    model = hash_model(apply_mean(parent, values * scale, checked.examples), config.run_id)
    if model != request.model_sha256:
        raise DecryptionRefused(Reason.MODEL_MISMATCH, "the model this device computed from the round is not the one "
                                                  "the server names")
    chunks = model_statement_chunks(checked.parent, model, checked.root, checked.leaves, statement.sha256)
    reply = RecordDict({COSIGN_KEY: ConfigRecord({"model-sha256": model})})
    _forget_sum(context)
    return sign_statement(reply, chunks, MODEL_TAG, server_round, config, context)


def _log_decryption(context: Context, server_round: int, digest: bytes, ciphertexts: int) -> None:
    """Once per round (a repeat of the same sum, for a new decryptor set, at most MAX_REPEATS times), and within
    the key's decryption budget; recorded before the partial leaves the device."""
    meta = context.state.config_records[KEY_STATE]
    rounds, sums, repeats = list(meta["rounds"]), list(meta["sums"]), list(meta["repeats"])  # type: ignore
    if server_round in rounds:
        i = rounds.index(server_round)
        if sums[i] != digest:
            raise DecryptionRefused(Reason.SECOND_SUM, f"this device already helped decrypt another sum of round "
                                                  f"{server_round}")
        if repeats[i] >= MAX_REPEATS:
            raise DecryptionRefused(Reason.TOO_MANY_REPEATS, f"round {server_round}'s sum was asked {MAX_REPEATS} times")
        repeats[i] += 1
    else:
        rounds, sums, repeats = rounds + [server_round], sums + [digest], repeats + [1]
    used = int(meta["decryptions"]) + ciphertexts  # type: ignore[call-overload]
    if used > PARAMS.max_decryptions:
        raise DecryptionRefused(Reason.KEY_EXHAUSTED, f"this key share has taken part in {PARAMS.max_decryptions} "
                                                 "ciphertext decryptions; start a new run (a new key)")
    meta["rounds"], meta["sums"], meta["repeats"], meta["decryptions"] = rounds, sums, repeats, used
    context.state[KEY_STATE] = meta
