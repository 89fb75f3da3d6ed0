"""The admission gate: a decoded update enters the aggregate only if an allowed client signed exactly it.

:meth:`Admission.admit` turns an :class:`~fedproof.core.replies.Update` into an :class:`Admitted` (the update and
its Merkle leaf) or a :class:`~fedproof.core.replies.Rejection` with the verifier's reason code: unknown or
revoked client, forged or altered signature, replayed from another round, run, chain or contract, payload
not the one signed, or a second update of the round. Failure is a value, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedproof.core.protocol import SignedEnvelope
from fedproof.core.replies import Reason, Rejection, Update
from ledger.bundle import SignedUpdate
from ledger.errors import BadSignature, UpdateVerificationError
from ledger.signing import UPDATE_TAG, ZERO_HASH
from ledger.verification import UpdateVerifier


@dataclass(frozen=True)
class Admitted:
    """An update that passed the gate, with the leaf the lineage records for it."""

    update: Update
    leaf: SignedUpdate
    reveal: SignedEnvelope | None = None
    """Under HE: the contributor's signature over the round's frozen commitments, given with its ciphertexts."""


class Admission:
    def __init__(self, verifier: UpdateVerifier) -> None:
        self.verifier = verifier

    def admit(self, server_round: int, update: Update, parent_model_hash: bytes = ZERO_HASH) -> Admitted | Rejection:
        """Admit ``update`` into round ``server_round``, whose clients were sent the model ``parent_model_hash``."""
        fields, signature = update.envelope.fields, update.envelope.signature
        try:
            if fields.tag != UPDATE_TAG or fields.client_id != update.client_id:
                raise BadSignature(f"signature is for another kind of reply or another sender ({fields.client_id!r})")
            if fields.num_examples != update.num_examples:
                raise BadSignature(f"example count {update.num_examples} differs from the signed one")
            registered = self.verifier.allow.weights.get(fields.client_id)
            if registered is not None and fields.num_examples > registered:
                return Rejection(update.node_id, update.client_id, Reason.BAD_EXAMPLE_COUNT,
                                 f"claims {fields.num_examples} examples, above its registered weight {registered}")
            key = self.verifier.verify(fields, signature, update.payload_sha256, server_round, parent_model_hash)
        except UpdateVerificationError as exc:
            return Rejection(update.node_id, update.client_id, Reason.of(exc), str(exc))
        return Admitted(update, SignedUpdate(fields, key, signature))
