"""The checks a key holder makes before it helps with anything: the round's frozen commitments, the sum it recomputes
from the signed, revealed leaves, the decryptor set, and its decryption budget (README, "Security argument")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import Reason
from fedproof.core.protocol import REFUSED, ClientReport, DecryptionRequest, SignedEnvelope, reveal_chunks
from fl_client.policy import client_policy
from fl_client.signing import allow_list, client_id, domain
from ledger.errors import UpdateVerificationError
from ledger.merkle import MerkleTree
from ledger.signing import REVEAL_TAG, UPDATE_TAG, leaf_bytes, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import CiphertextError, PrivacyError
from privacy.keygen import KeyHolding
from privacy.threshold import rerandomize, rerandomizer_seed, sum_ciphertexts, sum_digest
from fl_client.threshold.shared import DecryptionRefused, MAX_REPEATS, PARAMS, held_key_statement, key_holding
from fl_client.threshold.state import HeldKey, VerifiedSum


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


def _refusal_or(step, content: RecordDict, config: RunConfig, server_round: int, context: Context,
                min_contributors: int) -> RecordDict:
    """``step``'s signed reply, or the refusal (with its check's code) that the server records."""
    try:
        return step(content, config, server_round, context, min_contributors)
    except DecryptionRefused as exc:
        report = ClientReport(client_id(context), REFUSED, reason=str(exc))
        return RecordDict({"client": report.to_record()})


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
    seed = rerandomizer_seed(held_key_statement(context).sha256, server_round, digest, root, request.decryptors)
    total = rerandomize(holding.public_key, total, seed)
    return CheckedSum(total, total[:, 0], digest, root, len(leaves),
                      sum(e.fields.num_examples for e, _ in request.leaves), parent)


def _remember(context: Context, server_round: int, decryptors: tuple[str, ...], checked: CheckedSum) -> None:
    VerifiedSum(server_round, decryptors, checked.digest, checked.root, checked.leaves, checked.examples,
                checked.parent, checked.c0).keep(context)


def _remembered_sum(context: Context, server_round: int, request: DecryptionRequest) -> CheckedSum:
    """The sum this device verified when it helped decrypt ``request`` (same round, sum and decryptors)."""
    kept = VerifiedSum.recall(context)
    if kept is None or (kept.round, kept.sum_sha256, kept.decryptors) != (server_round, request.sum_sha256,
                                                                          tuple(request.decryptors)):
        raise DecryptionRefused(Reason.UNKNOWN_SUM, "a co-signing request without leaves, for a sum this device did not "
                                               "check and help decrypt: send the leaves")
    return CheckedSum(None, kept.c0, kept.sum_sha256, kept.merkle_root, kept.leaves, kept.examples, kept.parent)


def _forget_sum(context: Context) -> None:
    VerifiedSum.forget(context)


def _log_decryption(context: Context, server_round: int, digest: bytes, ciphertexts: int) -> None:
    """Once per round (a repeat of the same sum, for a new decryptor set, at most MAX_REPEATS times), and within
    the key's decryption budget; recorded before the partial leaves the device."""
    held = HeldKey.recall(context)
    assert held is not None, "a decryptor holds a key (checked first)"
    rounds, sums, repeats = list(held.rounds), list(held.sums), list(held.repeats)
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
    used = held.decryptions + ciphertexts
    if used > PARAMS.max_decryptions:
        raise DecryptionRefused(Reason.KEY_EXHAUSTED, f"this key share has taken part in {PARAMS.max_decryptions} "
                                                 "ciphertext decryptions; start a new run (a new key)")
    dataclasses.replace(held, rounds=tuple(rounds), sums=tuple(sums), repeats=tuple(repeats),
                        decryptions=used).keep(context)
