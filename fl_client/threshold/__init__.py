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

One module per protocol step, as Lattigo's ``multiparty`` has one file per protocol: ``ceremony`` (the key),
``upload`` (encrypt, commit, reveal), ``decryption``, ``cosigning``; ``checks`` holds what a key holder verifies
before it helps with anything, ``state`` the typed values it keeps between messages, ``shared`` the parameters and
the key it holds. No transport inside:
the ClientApp's handlers call these with the message content and the node's Context.
"""

from __future__ import annotations

from fl_client.threshold.shared import (
    DecryptionRefused,
    MAX_REPEATS,
    MAX_WEIGHT_SCALE,
    PARAMS,
    _config,
    key_holding,
    key_statement,
)
from fl_client.threshold.state import CeremonyState, DrawState, HeldKey, JoinedKey, PendingKey, Upload, VerifiedSum
from fl_client.threshold.checks import (
    CheckedSum,
    _Peers,
    _decryptor_set,
    _forget_sum,
    _frozen,
    _holding,
    _log_decryption,
    _refusal_or,
    _remember,
    _remembered_sum,
    _verified_sum,
)
from fl_client.threshold.ceremony import (
    _Ceremony,
    _hellos,
    _own_deal,
    _stored,
    _verified_hellos,
    keygen_commit,
    keygen_confirm,
    keygen_finish,
    keygen_hello,
    keygen_reveal,
)
from fl_client.threshold.draw import check_committee, draw_commit, draw_reveal, key_join
from fl_client.threshold.upload import _reveal_update, encrypt_update, reveal_update, withhold
from fl_client.threshold.decryption import _decrypt_share, decrypt_share
from fl_client.threshold.cosigning import _cosign_model, cosign_model

__all__ = [
    "CeremonyState",
    "DrawState",
    "JoinedKey",
    "check_committee",
    "draw_commit",
    "draw_reveal",
    "key_join",
    "HeldKey",
    "PendingKey",
    "Upload",
    "VerifiedSum",
    "DecryptionRefused",
    "MAX_REPEATS",
    "MAX_WEIGHT_SCALE",
    "PARAMS",
    "_config",
    "key_holding",
    "key_statement",
    "CheckedSum",
    "_Peers",
    "_decryptor_set",
    "_forget_sum",
    "_frozen",
    "_holding",
    "_log_decryption",
    "_refusal_or",
    "_remember",
    "_remembered_sum",
    "_verified_sum",
    "_Ceremony",
    "_hellos",
    "_own_deal",
    "_stored",
    "_verified_hellos",
    "keygen_commit",
    "keygen_confirm",
    "keygen_finish",
    "keygen_hello",
    "keygen_reveal",
    "_reveal_update",
    "encrypt_update",
    "reveal_update",
    "withhold",
    "_decrypt_share",
    "decrypt_share",
    "_cosign_model",
    "cosign_model",
]
