"""A contributor's encrypted update: encrypt under the joint key, commit (withhold the ciphertexts), reveal them to
the round's frozen set of commitments only."""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import Reason, UpdateRejected
from fedproof.core.protocol import (
    CIPHERTEXTS_KEY,
    EncryptedPayload,
    RevealRequest,
    SignedEnvelope,
    reveal_chunks,
)
from fl_client.signing import client_id, sign_statement
from ledger.signing import REVEAL_TAG
from privacy.errors import PrivacyError
from fl_client.threshold.shared import DecryptionRefused, key_statement, public_key
from fl_client.threshold.state import Upload
from fl_client.threshold.checks import _Peers, _frozen, _refusal_or


# ----------------------------------------------------------------------------------------- the update

def encrypt_update(delta: np.ndarray, weight: int, context: Context, sent_key: ArrayRecord | None = None
                   ) -> EncryptedPayload:
    """Ciphertexts of ``(weight / W) * delta`` under the joint key this device checked, W from the key statement
    every holder signed (co-signers multiply back by the same W: nobody's message sets it). ``sent_key``: the train
    message's public key, which a contributor outside the committee checks against the statement and uses."""
    scale = key_statement(context).weight_scale
    if not 1 <= weight <= scale:
        raise PrivacyError(f"weight {weight} outside 1..{scale} (the key's weight scale): not encrypting")
    chunks = public_key(context, sent_key).encrypt(delta * (weight / scale))
    return EncryptedPayload(tuple(chunks), delta.size)


def withhold(content: RecordDict, server_round: int, context: Context) -> RecordDict:
    """Commit, don't send: after the update is signed (its leaf covers the ciphertexts' digest), the ciphertexts
    leave the reply and stay on the device until the round's commitments are frozen (:func:`reveal_update`)."""
    payload = EncryptedPayload.take(content)
    envelope = SignedEnvelope.take(content)
    Upload(server_round, envelope.signature, payload.num_values, payload.chunks).keep(context)
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
    upload = Upload.recall(context)
    if upload is None or upload.round != server_round:
        raise DecryptionRefused(Reason.NOTHING_COMMITTED, f"this device committed to no update in round {server_round}")
    try:
        request = RevealRequest.take(content)
    except UpdateRejected as exc:
        raise DecryptionRefused(Reason.MALFORMED, str(exc)) from exc
    me = client_id(context)
    own = [e for e in request.committed if e.fields.client_id == me]
    if len(own) != 1 or own[0].signature != upload.leaf_signature:
        raise DecryptionRefused(Reason.NOT_IN_SET, "the frozen set does not hold this device's own commitment once")
    root, _ = _frozen(request.committed, _Peers.of(config, context, min_contributors), server_round,
                      own[0].fields.parent_model_hash)
    if upload.revealed_to not in (b"", root):
        raise DecryptionRefused(Reason.SECOND_SET, "this device revealed its update to another set in this round")
    if upload.revealed_to:
        raise DecryptionRefused(Reason.NOTHING_COMMITTED, f"this device revealed its update of round {server_round} "
                                                          "already")
    # what stays is the set it was revealed to, not the 0.6 MB of ciphertexts: Flower's simulation copies a node's
    # Context.state with every message to it, and a fleet's devices are asked again only rounds later
    dataclasses.replace(upload, ciphertexts=(), revealed_to=root).keep(context)
    reply = EncryptedPayload(upload.ciphertexts, upload.num_values).put(RecordDict())
    return sign_statement(reply, reveal_chunks(root), REVEAL_TAG, server_round, config, context)
