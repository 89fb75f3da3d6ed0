"""A key holder's partial decryption of the round's verified, re-randomized sum."""

from __future__ import annotations


from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import Reason, UpdateRejected
from fedproof.core.protocol import DECRYPTION_KEY, PARTIAL_KEY, DecryptionRequest, partial_chunks
from fl_client.signing import sign_statement
from ledger.signing import PARTIAL_TAG
from privacy.threshold import partial_decryption
from fl_client.threshold.shared import DecryptionRefused, PARAMS
from fl_client.threshold.checks import _Peers, _decryptor_set, _holding, _log_decryption, _refusal_or, _remember, _verified_sum


# ----------------------------------------------------------------------------------------- decrypting

def decrypt_share(content: RecordDict, config: RunConfig, server_round: int, context: Context,
                  min_contributors: int) -> RecordDict:
    """A partial decryption of the round's re-randomized sum, signed, or a refusal with the check that failed."""
    return _refusal_or(_decrypt_share, content, config, server_round, context, min_contributors)


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
