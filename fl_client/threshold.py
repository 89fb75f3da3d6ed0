"""A client's part in threshold HE: the key ceremony's three steps, encrypting under the joint key, and the
checks it runs before it helps decrypt anything.

Everything the device keeps for the run (its ceremony secrets, then its key share and the joint public key it
computed itself, and which sums it has helped decrypt) lives in the node's ``Context.state``: on the device,
never sent to the server. Every statement from another party (hellos, deals, update leaves) is checked against
the device's own copy of the allow-list before it is used.

A decryptor refuses, with a reason code, any request that is not: at least ``min-contributors`` distinct
allowed clients' signed updates of this run and round (the run's number, raised to the device's policy);
ciphertexts that hash to what each signed; a sum the device recomputed itself and that matches what it is asked
to decrypt; a decryptor set of exactly the key's threshold that includes it; the first sum of the round (a
repeat of the same sum with another decryptor set is allowed twice, for a member that dropped out); and within
the key's budget of decryptions (``ThresholdParams.max_decryptions``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedproof.config import RunConfig
from fedproof.errors import UpdateRejected
from fedproof.protocol import (
    CEREMONY_KEY,
    COSIGN_KEY,
    CosignRequest,
    DECRYPTION_KEY,
    PARTIAL_KEY,
    REFUSED,
    ClientReport,
    DecryptionRequest,
    EncryptedPayload,
    SignedEnvelope,
    hello_record,
    partial_chunks,
    take_hello,
)
from fl_client.policy import client_policy, federation_size
from fl_client.signing import allow_list, client_id, domain, sign_statement
from ledger.errors import UpdateVerificationError
from ledger.merkle import MerkleTree
from fedproof.weights import apply_mean, hash_model, num_values
from ledger.signing import (
    KEYGEN_TAG,
    MODEL_TAG,
    PARTIAL_TAG,
    UPDATE_TAG,
    leaf_bytes,
    model_statement_chunks,
    payload_digest,
)
from ledger.verification import verify_statement
from privacy.errors import CiphertextError, PrivacyError
from privacy.keygen import Hello, KeyHolding, PartySecrets, deal, deal_chunks, finish, hello
from privacy.threshold import (
    JointPublicKey,
    ThresholdParams,
    check_partial,
    fuse,
    majority,
    partial_decryption,
    sum_ciphertexts,
    sum_digest,
)

PARAMS = ThresholdParams()
CEREMONY_STATE, KEY_ARRAYS, KEY_STATE = "fedproof.ceremony", "fedproof.threshold-key", "fedproof.threshold"
VERIFIED_SUM, VERIFIED_C0 = "fedproof.verified-sum", "fedproof.verified-sum-c0"
"""The sum this device last checked and helped decrypt (what the leaves said, and the sum's c0): a co-signing
request from the same decryption may then omit the leaves, and the device uses what it verified itself."""
MAX_REPEATS = 3


class DecryptionRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# ----------------------------------------------------------------------------------------- the ceremony

def keygen_hello(config: RunConfig, context: Context) -> RecordDict:
    party = client_id(context)
    announced, secrets = hello(PARAMS, party)
    context.state[CEREMONY_STATE] = ConfigRecord({"secrets": secrets.to_bytes()})
    content = RecordDict({"hello": hello_record(party, announced.contribution, announced.exchange_key)})
    return sign_statement(content, announced.chunks(), KEYGEN_TAG, 1, config, context)


def _verified_hellos(content: RecordDict, config: RunConfig, context: Context) -> dict[str, Hello]:
    allow, where = allow_list(config, context), domain(config, context)
    count = _ceremony(content)["parties"]
    hellos: dict[str, Hello] = {}
    for i in range(int(count)):  # type: ignore[call-overload]
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


def keygen_deal(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 2: check everyone's hello, then deal this party's public-key share and sealed Shamir shares."""
    hellos = _verified_hellos(content, config, context)
    threshold = int(_ceremony(content)["threshold"])  # type: ignore[call-overload]
    stored = context.state.config_records.get(CEREMONY_STATE)
    if stored is None or "parties" in stored:  # dealing one secret twice, to other sets, could leak it
        raise UpdateRejected("a deal request before this device's hello, or a second one for the same secret")
    secrets = PartySecrets.from_bytes(stored["secrets"], PARAMS)  # type: ignore[arg-type]
    dealt = deal(PARAMS, client_id(context), secrets, hellos, threshold)
    parties = sorted(hellos)
    context.state[CEREMONY_STATE] = ConfigRecord({
        "secrets": secrets.to_bytes(), "threshold": threshold, "parties": parties,
        "contributions": [hellos[p].contribution for p in parties],
        "exchange-keys": [hellos[p].exchange_key for p in parties]})
    recipients = sorted(dealt.sealed)
    reply = RecordDict({"deal": ArrayRecord({"public-share": Array(dealt.public_share)}),
                        "sealed": ConfigRecord({"recipients": recipients,
                                                "shares": [dealt.sealed[r] for r in recipients]})})
    return sign_statement(reply, dealt.chunks(), KEYGEN_TAG, 2, config, context)


def keygen_finish(content: RecordDict, config: RunConfig, context: Context) -> RecordDict:
    """Step 3: check every dealer's signed deal, open the shares sealed to this party, keep the key share and
    the joint public key this device computed itself; acknowledge that key's digest."""
    stored = context.state.config_records.get(CEREMONY_STATE)
    if stored is None or "parties" not in stored:
        raise UpdateRejected("a finish request before this device dealt")
    party, threshold = client_id(context), int(stored["threshold"])  # type: ignore[call-overload]
    hellos = {p: Hello(p, c, k) for p, c, k in zip(stored["parties"], stored["contributions"],  # type: ignore
                                                    stored["exchange-keys"])}  # type: ignore[call-overload]
    allow, where = allow_list(config, context), domain(config, context)
    deals: dict[str, tuple[np.ndarray, bytes]] = {}
    for i in range(int(_ceremony(content)["parties"])):  # type: ignore[call-overload]
        meta = content.config_records[f"deal-{i:04d}-sealed"]
        dealer, mine = meta["party"], meta["for-you"]
        recipients, hashes = list(meta["recipients"]), list(meta["hashes"])  # type: ignore[arg-type]
        if not isinstance(dealer, str) or not isinstance(mine, bytes) or dealer not in hellos or dealer in deals:
            raise UpdateRejected(f"deal {i} names no party of this ceremony, or one twice")
        by_recipient = dict(zip(recipients, hashes))
        if by_recipient.get(party) != hashlib.sha256(mine).digest() or set(by_recipient) != set(hellos):
            raise UpdateRejected(f"the deal of {dealer!r} does not cover this party's share as sent")
        public = content.array_records[f"deal-{i:04d}"]["public-share"].numpy()
        envelope = SignedEnvelope.take(content, f"deal-{i:04d}-signed")
        verify_statement(allow, where, envelope.fields, envelope.signature, tag=KEYGEN_TAG, round=2,
                         client_id=dealer, payload_sha256=payload_digest(deal_chunks(dealer, public, by_recipient)))
        deals[dealer] = (public, mine)
    secrets = PartySecrets.from_bytes(stored["secrets"], PARAMS)  # type: ignore[arg-type]
    holding = finish(PARAMS, party, secrets, hellos, deals, threshold)
    _keep(context, holding)
    del context.state[CEREMONY_STATE]  # s_i is no longer needed: only the threshold share stays
    digest = holding.public_key.digest
    return sign_statement(RecordDict({"ack": ConfigRecord({"public-key-sha256": digest})}), [b"ack", digest],
                          KEYGEN_TAG, 3, config, context)


def _ceremony(content: RecordDict) -> ConfigRecord:
    record = content.config_records.get(CEREMONY_KEY)
    if record is None or type(record.get("threshold")) is not int or type(record.get("parties")) is not int:
        raise UpdateRejected("not a key-ceremony message")
    return record


def _keep(context: Context, holding: KeyHolding) -> None:
    p0, a = holding.public_key.to_arrays()
    context.state[KEY_ARRAYS] = ArrayRecord({"p0": Array(p0), "a": Array(a), "share": Array(holding.share)})
    parties = sorted(holding.points)
    prior = context.state.config_records.get(KEY_STATE)  # a new key in the same run keeps the rounds' log:
    log = {k: list(prior[k]) for k in ("rounds", "sums", "repeats")} if prior else {  # type: ignore[arg-type]
        "rounds": [], "sums": [], "repeats": []}  # re-keying never buys a second sum of a round
    context.state[KEY_STATE] = ConfigRecord({"party": holding.party, "parties": parties,
                                             "threshold": holding.threshold, **log, "decryptions": 0})


def key_holding(context: Context) -> KeyHolding:
    arrays, meta = context.state.array_records.get(KEY_ARRAYS), context.state.config_records.get(KEY_STATE)
    if arrays is None or meta is None:
        raise PrivacyError("this device holds no share of the run's threshold key (the key ceremony did not "
                           "complete with it)")
    points = {p: i + 1 for i, p in enumerate(meta["parties"])}  # type: ignore[arg-type]
    a = arrays["a"].numpy()
    pk = JointPublicKey(PARAMS, arrays["p0"].numpy(), [a[0], a[1]])
    return KeyHolding(str(meta["party"]), points, int(meta["threshold"]), pk,  # type: ignore[call-overload]
                      arrays["share"].numpy())


# ----------------------------------------------------------------------------------------- encrypting

def encrypt_update(delta: np.ndarray, weight: int, weight_scale: int, context: Context) -> EncryptedPayload:
    """Ciphertexts of ``(weight / weight_scale) * delta`` under the joint key this device checked."""
    if not 1 <= weight <= weight_scale:
        raise PrivacyError(f"weight {weight} outside 1..{weight_scale} (he-weight-scale): not encrypting")
    chunks = key_holding(context).public_key.encrypt(delta * (weight / weight_scale))
    return EncryptedPayload(tuple(chunks), delta.size)


# ----------------------------------------------------------------------------------------- decrypting

def decrypt_share(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    """A partial decryption of the round's sum, signed, or a refusal with the check that failed."""
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
        raise DecryptionRefused("malformed", str(exc)) from exc
    decryptors = _decryptor_set(request, holding)
    if holding.party not in decryptors:
        raise DecryptionRefused("bad-decryptors", "this device is not in the decryptor set it is asked to join")
    checked = _verified_sum(request, config, server_round, context, min_contributors)
    assert checked.total is not None
    _log_decryption(context, server_round, checked.digest, checked.total.shape[0])
    _remember(context, server_round, decryptors, checked)
    points = [holding.points[d] for d in decryptors]
    std = PARAMS.flooding_std(len(holding.points), len(allow_list(config, context).keys))
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
        raise DecryptionRefused("no-key", str(exc)) from exc


def _decryptor_set(request: DecryptionRequest, holding: KeyHolding) -> tuple[str, ...]:
    decryptors = request.decryptors
    if (len(decryptors) != holding.threshold or len(set(decryptors)) != len(decryptors)
            or not set(decryptors) <= set(holding.points)):
        raise DecryptionRefused("bad-decryptors", f"decryptors {list(decryptors)[:8]} are not {holding.threshold} "
                                                  "distinct key holders")
    return decryptors


@dataclass(frozen=True)
class CheckedSum:
    """A round's sum as this device recomputed it from the signed leaves, and what the leaves say."""

    total: np.ndarray | None
    """The summed ciphertexts (None when recalled from an earlier check: only ``c0`` was kept)."""
    c0: np.ndarray
    """``total[:, 0]``: all that fusing partial decryptions needs of the sum."""
    digest: bytes
    root: bytes
    leaves: int
    examples: int
    parent: bytes
    """The model every leaf signed it trained from."""


def _verified_sum(request: DecryptionRequest, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> CheckedSum:
    """Every leaf signed by a distinct allowed client for this run and round, from one parent model, at least the
    device's floor of them; their ciphertexts summed here, and that sum the one the server named."""
    allow, where = allow_list(config, context), domain(config, context)
    floor = client_policy(config, context).contributors_floor(min_contributors)
    contributors = {envelope.fields.client_id for envelope, _ in request.leaves}
    if len(contributors) < floor or len(contributors) != len(request.leaves):
        raise DecryptionRefused("too-few-contributors", f"{len(request.leaves)} leaves from {len(contributors)} "
                                                        f"distinct clients; this device requires {floor}")
    if len(request.leaves) > len(allow.keys):
        raise DecryptionRefused("too-many-leaves", "more leaves than registered clients")
    leaves = []
    for envelope, chunks in request.leaves:
        f = envelope.fields
        try:
            key = verify_statement(allow, where, f, envelope.signature, tag=UPDATE_TAG, round=server_round,
                                   client_id=f.client_id, payload_sha256=payload_digest(chunks))
        except UpdateVerificationError as exc:
            raise DecryptionRefused("bad-leaf", str(exc)) from exc
        leaves.append(leaf_bytes(f, key, envelope.signature))
    parents = {envelope.fields.parent_model_hash for envelope, _ in request.leaves}
    if len(parents) != 1:
        raise DecryptionRefused("mixed-parents", "the leaves were trained from different models: the server sent "
                                                 "clients different models in one round")
    try:
        total = sum_ciphertexts(PARAMS, [chunks for _, chunks in request.leaves])
    except CiphertextError as exc:
        raise DecryptionRefused("bad-ciphertext", str(exc)) from exc
    digest = sum_digest(total)
    if digest != request.sum_sha256:
        raise DecryptionRefused("sum-mismatch", "the sum of the signed leaves is not the sum asked to decrypt")
    return CheckedSum(total, total[:, 0], digest, MerkleTree(leaves).root, len(leaves),
                      sum(e.fields.num_examples for e, _ in request.leaves), parents.pop())


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
        raise DecryptionRefused("unknown-sum", "a co-signing request without leaves, for a sum this device did not "
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
    try:
        request = CosignRequest.take(content)
    except UpdateRejected as exc:
        raise DecryptionRefused("malformed", str(exc)) from exc
    decryptors = _decryptor_set(request.decryption, holding)
    checked = (_verified_sum(request.decryption, config, server_round, context, min_contributors)
               if request.decryption.leaves else _remembered_sum(context, server_round, request.decryption))
    allow, where = allow_list(config, context), domain(config, context)
    partials = []
    for party, (envelope, values) in zip(decryptors, request.partials):
        try:
            check_partial(PARAMS, values, checked.c0.shape[0])
            chunks = partial_chunks(checked.digest, checked.root, decryptors, values.astype("<u8").tobytes())
            verify_statement(allow, where, envelope.fields, envelope.signature, tag=PARTIAL_TAG, round=server_round,
                             client_id=party, payload_sha256=payload_digest(chunks))
        except (UpdateVerificationError, CiphertextError) as exc:
            raise DecryptionRefused("bad-partial", f"decryptor {party}: {exc}") from exc
        partials.append(values)
    parent = request.parent
    if hash_model(parent, config.run_id) != checked.parent:
        raise DecryptionRefused("wrong-parent", "the parent model sent is not the one the leaves trained from")
    values = fuse(PARAMS, checked.c0, partials, num_values(parent))
    if not np.all(np.abs(values) <= PARAMS.max_abs_value * 1.01):
        raise DecryptionRefused("out-of-range", "the fused sum lies outside the scheme's range")
    scale = config.he_weight_scale
    if not 1 <= checked.examples <= scale:
        raise DecryptionRefused("bad-weights", f"{checked.examples} examples outside 1..he-weight-scale {scale}")
    model = hash_model(apply_mean(parent, values * scale, checked.examples), config.run_id)
    if model != request.model_sha256:
        raise DecryptionRefused("model-mismatch", "the model this device computed from the round is not the one "
                                                  "the server names")
    statement = model_statement_chunks(checked.parent, model, checked.root, checked.leaves, holding.threshold,
                                       len(holding.points))
    reply = RecordDict({COSIGN_KEY: ConfigRecord({"model-sha256": model})})
    _forget_sum(context)
    return sign_statement(reply, statement, MODEL_TAG, server_round, config, context)


def _log_decryption(context: Context, server_round: int, digest: bytes, ciphertexts: int) -> None:
    """Once per round (a repeat of the same sum, for a new decryptor set, at most MAX_REPEATS times), and within
    the key's decryption budget; recorded before the partial leaves the device."""
    meta = context.state.config_records[KEY_STATE]
    rounds, sums, repeats = list(meta["rounds"]), list(meta["sums"]), list(meta["repeats"])  # type: ignore
    if server_round in rounds:
        i = rounds.index(server_round)
        if sums[i] != digest:
            raise DecryptionRefused("second-sum", f"this device already helped decrypt another sum of round "
                                                  f"{server_round}")
        if repeats[i] >= MAX_REPEATS:
            raise DecryptionRefused("too-many-repeats", f"round {server_round}'s sum was asked {MAX_REPEATS} times")
        repeats[i] += 1
    else:
        rounds, sums, repeats = rounds + [server_round], sums + [digest], repeats + [1]
    used = int(meta["decryptions"]) + ciphertexts  # type: ignore[call-overload]
    if used > PARAMS.max_decryptions:
        raise DecryptionRefused("key-exhausted", f"this key share has taken part in {PARAMS.max_decryptions} "
                                                 "ciphertext decryptions; start a new run (a new key)")
    meta["rounds"], meta["sums"], meta["repeats"], meta["decryptions"] = rounds, sums, repeats, used
    context.state[KEY_STATE] = meta
