"""The server's gate: a reply's signature is checked against the allow-list before its update may be aggregated.

This turns a train reply into a :class:`~ledger.bundle.SignedUpdate` (its Merkle leaf), or raises why not
(:class:`~ledger.errors.UpdateVerificationError`, or :class:`UpdateRejected` for a reply with no usable
signature); committee replies are checked the same way under their own signing tag.
"""

from __future__ import annotations

from flwr.app import Message

from fedproof.protocol import ClientReport, SignedEnvelope, payload_chunks
from ledger.errors import BadSignature, ReplayedUpdate
from ledger.bundle import SignedUpdate
from ledger.signing import DECRYPT_TAG, UPDATE_TAG, payload_digest, verify_signature
from ledger.verification import UpdateVerifier


class Admission:
    def __init__(self, verifier: UpdateVerifier) -> None:
        self.verifier = verifier

    def admit(self, server_round: int, msg: Message) -> SignedUpdate:
        envelope = SignedEnvelope.take(msg.content)
        fields = envelope.fields
        report = ClientReport.from_reply(msg.content)
        if fields.tag != UPDATE_TAG or (report is not None and report.client_id != fields.client_id):
            raise BadSignature(f"client {fields.client_id}: signature is not for this kind of reply or sender")
        count = msg.content.metric_records.get("metrics", {}).get("num-examples")
        if count != fields.num_examples:
            raise BadSignature(f"client {fields.client_id}: example count {count} differs from the signed one")
        key = self.verifier.verify(fields, envelope.signature, payload_digest(payload_chunks(msg.content)),
                                   server_round)
        return SignedUpdate(fields, key, envelope.signature)

    def check_decryption(self, server_round: int, msg: Message, values: bytes) -> None:
        """A committee reply must be signed, by an allowed client, for this round, over exactly these values."""
        envelope = SignedEnvelope.take(msg.content)
        f, v = envelope.fields, self.verifier
        key = v.allow.key_for(f.client_id)
        verify_signature(key, f, envelope.signature)
        if (f.tag, f.chain_id, f.contract, f.run_id, f.round) != (DECRYPT_TAG, v.chain_id, v.contract, v.run_id,
                                                                  server_round):
            raise ReplayedUpdate(f"client {f.client_id}: decryption signed for another round, run or chain")
        if f.payload_sha256 != payload_digest([values]):
            raise BadSignature(f"client {f.client_id}: decrypted values differ from the signed ones")
