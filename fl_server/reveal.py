"""Commit, then reveal: the round's set of encrypted updates is frozen before anyone sees a ciphertext of it.

Under HE a train reply carries only the client's signed leaf, whose payload digest commits to its ciphertexts.
Once the admitted leaves are known, the server sends that frozen set to each contributor; a contributor reveals
its ciphertexts (signing the set's Merkle root) only if the set holds its own commitment and at least its floor of
other clients' (fl_client.threshold.reveal_update). Decryptors then accept a sum only of leaves from that set, each
revealed to it. So an accomplice's leaf was fixed before any honest ciphertext of the round existed outside its
device, and cannot be ``Enc(0) - (the others)`` (README, "Security argument").

A contributor that refuses, does not answer, or reveals ciphertexts other than the ones it committed to is left
out of the sum, with its reason code; the others' reveals still hold (they signed the whole frozen set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from flwr.app import RecordDict
from flwr.serverapp import Grid

from fedproof.core.protocol import REVEAL_UPDATE, RevealRequest, SignedEnvelope, reveal_chunks
from fedproof.core.replies import ModelSpec, Reason, Rejection, decode_reveal_reply
from fl_server.admission import Admitted
from fl_server.exchange import ask
from ledger.errors import UpdateVerificationError
from ledger.merkle import MerkleTree
from ledger.signing import REVEAL_TAG, payload_digest
from ledger.verification import AllowList, Domain, verify_statement


@dataclass(frozen=True)
class Reveals:
    revealed: tuple[Admitted, ...]
    """The updates whose ciphertexts came back as committed, each with its signed reveal."""
    committed: tuple[SignedEnvelope, ...]
    """The frozen set: every admitted commitment of the round, revealed or not."""
    rejections: tuple[Rejection, ...]


def reveal_updates(grid: Grid, server_round: int, settings: Mapping, admitted: list[Admitted], spec: ModelSpec,
                   allow: AllowList, domain: Domain, timeout: float) -> Reveals:
    committed = tuple(a.update.envelope for a in admitted)
    if not admitted:
        return Reveals((), committed, ())
    root = MerkleTree([a.leaf.leaf for a in admitted]).root
    by_node = {a.update.node_id: a for a in admitted}
    replies, rejections = ask(grid, list(by_node), REVEAL_UPDATE, RevealRequest(committed).put(RecordDict()),
                              settings, server_round, timeout, phase="reveal")
    revealed = []
    for reply in replies:
        outcome = decode_reveal_reply(reply, spec)
        if isinstance(outcome, Rejection):  # named by the client whose commitment the node's reply answers
            known = by_node.get(outcome.node_id)
            rejections.append(replace(outcome, client_id=known.update.client_id) if known else outcome)
            continue
        a = by_node[outcome.node_id]
        client = a.update.client_id
        if payload_digest(outcome.payload.chunks) != a.update.envelope.fields.payload_sha256:
            rejections.append(Rejection(outcome.node_id, client, Reason.PAYLOAD_MISMATCH,
                                        "revealed ciphertexts other than the ones it committed to", "reveal"))
            continue
        try:
            verify_statement(allow, domain, outcome.envelope.fields, outcome.envelope.signature, tag=REVEAL_TAG,
                             round=server_round, client_id=client,
                             payload_sha256=payload_digest(reveal_chunks(root)))
        except UpdateVerificationError as exc:
            rejections.append(Rejection(outcome.node_id, client, Reason.of(exc), str(exc), "reveal"))
            continue
        size = sum(len(c) for c in outcome.payload.chunks)
        revealed.append(Admitted(replace(a.update, ciphertexts=outcome.payload, upload_bytes=size), a.leaf,
                                 outcome.envelope))
    revealed.sort(key=lambda a: a.update.node_id)
    return Reveals(tuple(revealed), committed, tuple(rejections))
