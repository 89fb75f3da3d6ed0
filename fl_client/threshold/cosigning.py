"""A key holder's co-signature of the round's new model, which it computes itself from what it decrypted."""

from __future__ import annotations


from flwr.app import ConfigRecord, Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import Reason, UpdateRejected
from fedproof.core.decryption_checks import fused_in_range, verify_partial
from fedproof.core.protocol import COSIGN_KEY, CosignRequest
from fl_client.signing import sign_statement
from ledger.errors import UpdateVerificationError
from fedproof.core.weights import apply_mean, hash_model, num_values
from ledger.signing import MODEL_TAG, model_statement_chunks
from privacy.errors import CiphertextError
from privacy.threshold import fuse
from fl_client.threshold.shared import DecryptionRefused, PARAMS, held_key_statement
from fl_client.threshold.checks import _Peers, _decryptor_set, _forget_sum, _holding, _refusal_or, _remembered_sum, _verified_sum


# ----------------------------------------------------------------------------------------- co-signing

def cosign_model(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                 min_contributors: int) -> RecordDict:
    """A signature of the round's new model hash, after this device fused the t signed partial decryptions
    itself and computed the model from the parent; or a refusal with the check that failed."""
    return _refusal_or(_cosign_model, content, config, server_round, context, min_contributors)


def _cosign_model(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    holding = _holding(context)
    statement = held_key_statement(context)
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
            verify_partial(PARAMS, allow, where, server_round, party, decryptors, checked.digest, checked.root,
                           envelope, values, checked.c0.shape[0])
        except (UpdateVerificationError, CiphertextError) as exc:
            raise DecryptionRefused(Reason.BAD_PARTIAL, f"decryptor {party}: {exc}") from exc
        partials.append(values)
    parent = request.parent
    if hash_model(parent, config.run_id) != checked.parent:
        raise DecryptionRefused(Reason.WRONG_PARENT, "the parent model sent is not the one the leaves trained from")
    values = fuse(PARAMS, checked.c0, partials, num_values(parent) + config.count_slots)
    if not fused_in_range(PARAMS, values):
        raise DecryptionRefused(Reason.OUT_OF_RANGE, "the fused sum lies outside the scheme's range")
    scale = statement.weight_scale  # signed by every holder: the server's message has no say in it
    if not 1 <= checked.examples <= scale:
        raise DecryptionRefused(Reason.BAD_WEIGHTS, f"{checked.examples} examples outside 1..{scale} (the key's weight "
                                               "scale)")
    model = hash_model(apply_mean(parent, values[: num_values(parent)] * scale, checked.examples, config.server_lr),
                       config.run_id)
    if model != request.model_sha256:
        raise DecryptionRefused(Reason.MODEL_MISMATCH, "the model this device computed from the round is not the one "
                                                  "the server names")
    chunks = model_statement_chunks(checked.parent, model, checked.root, checked.leaves, statement.sha256)
    reply = RecordDict({COSIGN_KEY: ConfigRecord({"model-sha256": model})})
    _forget_sum(context)
    return sign_statement(reply, chunks, MODEL_TAG, server_round, config, context)
