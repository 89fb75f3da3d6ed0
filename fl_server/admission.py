"""The admission gate: a decoded update enters the aggregate only if an allowed client signed exactly it.

:meth:`Admission.admit` turns an :class:`~fedproof.replies.Update` into an :class:`Admitted` (the update and
its Merkle leaf) or a :class:`~fedproof.replies.Rejection` with the verifier's reason code: unknown or
revoked client, forged or altered signature, replayed from another round, run, chain or contract, payload
not the one signed, or a second update of the round. Committee replies are checked the same way under
their own signing tag (:meth:`Admission.check_decryption`). Failure is a value, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedproof.replies import Decryption, Reason, Rejection, Update
from ledger.bundle import SignedUpdate
from ledger.errors import BadSignature, ReplayedUpdate, UpdateVerificationError
from ledger.signing import DECRYPT_TAG, UPDATE_TAG, ZERO_HASH, payload_digest, verify_signature
from ledger.verification import UpdateVerifier


@dataclass(frozen=True)
class Admitted:
    """An update that passed the gate, with the leaf the lineage records for it."""

    update: Update
    leaf: SignedUpdate


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

    def check_decryption(self, server_round: int, decryption: Decryption) -> Rejection | None:
        """A committee reply must be signed, by an allowed client, for this round, over exactly these values."""
        f, v = decryption.envelope.fields, self.verifier
        try:
            verify_signature(v.allow.key_for(f.client_id), f, decryption.envelope.signature)
            if f.tag != DECRYPT_TAG or not v.domain.holds(f) or f.round != server_round:
                raise ReplayedUpdate(f"client {f.client_id}: decryption signed for another round, run or chain")
            if f.payload_sha256 != payload_digest([decryption.values.tobytes()]):
                raise BadSignature(f"client {f.client_id}: decrypted values differ from the signed ones")
        except UpdateVerificationError as exc:
            return Rejection(decryption.node_id, f.client_id, Reason.of(exc), str(exc), "decrypt")
        return None
