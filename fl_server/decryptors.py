"""Threshold decryption of a round's sum: t key holders each check the round and send a flooded partial
decryption; the server fuses them.

The request carries every revealed update (its signed envelope, ciphertexts and signed reveal), the round's frozen
set of commitments, the set of t decryptors and the digest of the sum the server computed; each holder recomputes
the sum from the signed leaves and refuses anything else (fl_client.threshold), then decrypts the sum plus an
encryption of zero that a hash of the request fixes (privacy.threshold.rerandomize); the server adds the same to
``c0`` before fusing. Holders are drawn at random (seeded by run and round) from the key's
holders, contributors or not. If any of the t refuses, fails or does not answer, it is set aside and a new set
of t is asked (the Lagrange weights depend on the set), up to :data:`ATTEMPTS` times: so up to n - t holders
may drop out. Each partial must be signed by its holder over (sum digest, Merkle root of the leaves, the set,
the partial), and the fused values must lie in the scheme's range, or the round is void.

Then t key holders co-sign the new model (:meth:`ThresholdCommittee.cosign`): each is sent the t signed partials
and the parent (and the leaves, unless it is one of the decryptors: those kept the sum they verified), recomputes
or recalls the sum, fuses the partials and applies the mean itself, and signs
(parent hash, model hash, Merkle root, leaf count, key statement digest) only if it gets the hash the server
names. The decryptors
are asked first; holders that refuse or do not answer are replaced by the other holders, once. Without t
co-signatures the round is void: the lineage never records a model that only the server vouches for.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp import Grid

from fedproof.core.protocol import (
    COSIGN_MODEL,
    DECRYPT_SHARE,
    CosignRequest,
    DecryptionRequest,
    SignedEnvelope,
)
from fedproof.core.decryption_checks import fused_in_range, verify_partial
from fedproof.core.replies import (
    ModelCosignature,
    PartialDecryption,
    Reason,
    Rejection,
    decode_cosign_reply,
    decode_partial_reply,
)
from fl_server.admission import Admitted
from fl_server.keygen import FederationKey
from fl_server.exchange import ask
from ledger.errors import UpdateVerificationError
from ledger.merkle import MerkleTree
from ledger.bundle import Cosignature
from ledger.signing import MODEL_TAG, leaf_bytes, model_statement_chunks, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import CiphertextError
from privacy.threshold import fuse, rerandomized_c0, rerandomizer_seed, sum_digest

log = logging.getLogger(__name__)
ATTEMPTS = 3


@dataclass(frozen=True)
class Decrypted:
    """What t key holders made of a round's sum: the values (None when the round is void, ``failure`` says why),
    the request they answered and their signed partials (in the decryptors' order), and who was set aside."""

    values: np.ndarray | None
    failure: str = ""
    rejections: tuple[Rejection, ...] = ()
    request: DecryptionRequest | None = None
    partials: tuple[PartialDecryption, ...] = ()


@dataclass(frozen=True)
class Endorsement:
    """The clients' co-signatures of a round's model, and the key they decrypted under (t of n, and the digest of
    its statement, which every co-signature names)."""

    threshold: int
    holders: int
    cosignatures: tuple[Cosignature, ...]
    key_sha256: bytes


@dataclass(frozen=True)
class Cosigned:
    endorsement: Endorsement | None
    """None when fewer than t key holders vouched for the model (``failure`` says why)."""
    failure: str = ""
    rejections: tuple[Rejection, ...] = ()


@dataclass(frozen=True)
class ThresholdCommittee:
    key: FederationKey
    seed: int
    timeout: float
    allow: AllowList
    domain: Domain

    def decrypt(self, grid: Grid, server_round: int, settings: Mapping, admitted: list[Admitted],
                total: np.ndarray, length: int, committed: tuple[SignedEnvelope, ...] = ()) -> Decrypted:
        """``admitted``: the revealed updates in the sum (each with its signed reveal); ``committed``: the round's
        frozen set of commitments they were revealed to."""
        key, params = self.key, self.key.params
        digest, root = sum_digest(total), MerkleTree([a.leaf.leaf for a in admitted]).root
        leaves = tuple((a.update.envelope, a.update.ciphertexts.chunks) for a in admitted)  # type: ignore[union-attr]
        reveals = tuple(a.reveal for a in admitted if a.reveal is not None)
        party_of = {node: party for party, node in key.nodes.items()}
        live = sorted(key.nodes)
        random.Random(f"decryptors/{self.seed}/{server_round}").shuffle(live)
        rejected: list[Rejection] = []
        for _ in range(ATTEMPTS):
            if len(live) < key.threshold:
                break
            chosen = tuple(sorted(live[: key.threshold]))
            request = DecryptionRequest(chosen, digest, leaves, reveals, committed)
            replies, missing = ask(grid, [key.nodes[p] for p in chosen], DECRYPT_SHARE, request.put(RecordDict()),
                                   settings, server_round, self.timeout, phase="decrypt")
            failed = list(missing)
            partials = []
            for reply in replies:
                party = party_of[reply.metadata.src_node_id]
                outcome = self._check(decode_partial_reply(reply, (total.shape[0], params.n)), party, server_round,
                                      digest, root, chosen)
                (failed if isinstance(outcome, Rejection) else partials).append(outcome)
            if not failed:
                # the decryptors decrypted the sum plus the encryption of zero this request's hash fixes
                seed = rerandomizer_seed(key.statement.sha256, server_round, digest, root, chosen)
                c0 = rerandomized_c0(key.public_key, total[:, 0], seed)
                values = fuse(params, c0, [p.values for p in partials], length)
                if not fused_in_range(params, values):
                    return Decrypted(None, f"round {server_round}: the fused sum lies outside the scheme's range "
                                           "(a partial decryption was wrong); the round is void", tuple(rejected))
                by_party = {party_of[p.node_id]: p for p in partials}
                return Decrypted(values, "", tuple(rejected), request, tuple(by_party[c] for c in chosen))
            for r in failed:
                log.warning("round %s: decryptor set aside: %s", server_round, r)
            rejected += failed
            gone = {party_of.get(r.node_id, r.client_id) for r in failed}
            live = [p for p in live if p not in gone]
        problems = "; ".join(str(r) for r in rejected[-4:]) or "no answer"
        return Decrypted(None, f"round {server_round}: fewer than {key.threshold} key holders decrypted the sum "
                               f"({problems}); the round is void and the model unchanged", tuple(rejected))

    def cosign(self, grid: Grid, server_round: int, settings: Mapping, decrypted: Decrypted, parent: ArrayRecord,
               parent_hash: bytes, model_hash: bytes) -> Cosigned:
        """At least t key holders' signatures of (parent, model, leaves, t of n), each after recomputing the model."""
        key, request = self.key, decrypted.request
        assert request is not None, "co-signing follows a successful decryption"
        root = MerkleTree([leaf_bytes(e.fields, self.allow.keys[e.fields.client_id], e.signature)
                           for e, _ in request.leaves]).root
        statement = model_statement_chunks(parent_hash, model_hash, root, len(request.leaves), key.statement.sha256)
        partials = tuple((p.envelope, p.values) for p in decrypted.partials)
        cosign = CosignRequest(request, partials, parent, model_hash)
        # the decryptors checked the leaves already and keep what they verified: their request omits them
        by_reference = CosignRequest(DecryptionRequest(request.decryptors, request.sum_sha256, ()), partials, parent,
                                     model_hash)
        party_of = {node: party for party, node in key.nodes.items()}
        others = [p for p in sorted(key.nodes) if p not in request.decryptors]
        random.Random(f"cosigners/{self.seed}/{server_round}").shuffle(others)
        signed: dict[str, Cosignature] = {}
        rejected: list[Rejection] = []
        for asked, sent in ((request.decryptors, by_reference), (others, cosign)):  # others replace any that failed
            wanted = asked[: key.threshold - len(signed)]
            if not wanted:
                continue
            replies, missing = ask(grid, [key.nodes[p] for p in wanted], COSIGN_MODEL, sent.put(RecordDict()),
                                   settings, server_round, self.timeout, phase="cosign")
            rejected += missing
            for reply in replies:
                party = party_of[reply.metadata.src_node_id]
                outcome = self._check_cosign(decode_cosign_reply(reply), party, server_round, model_hash, statement)
                if isinstance(outcome, Rejection):
                    rejected.append(outcome)
                else:
                    signed[party] = outcome
            if len(signed) >= key.threshold:
                endorsement = Endorsement(key.threshold, len(key.nodes), tuple(signed[p] for p in sorted(signed)),
                                          key.statement.sha256)
                return Cosigned(endorsement, "", tuple(rejected))
        for r in rejected:
            log.warning("round %s: co-signature set aside: %s", server_round, r)
        problems = "; ".join(str(r) for r in rejected[-4:]) or "no answer"
        return Cosigned(None, f"round {server_round}: only {len(signed)} of the {key.threshold} key holders needed "
                              f"co-signed the new model ({problems}); the round is void and the model unchanged",
                        tuple(rejected))

    def _check_cosign(self, outcome: ModelCosignature | Rejection, party: str, server_round: int, model_hash: bytes,
                      statement: list[bytes]) -> Cosignature | Rejection:
        if isinstance(outcome, Rejection):
            return outcome
        try:
            if outcome.model_sha256 != model_hash:
                raise CiphertextError(f"it computed model {outcome.model_sha256.hex()[:16]}…, not the server's")
            key = verify_statement(self.allow, self.domain, outcome.envelope.fields, outcome.envelope.signature,
                                   tag=MODEL_TAG, round=server_round, client_id=party,
                                   payload_sha256=payload_digest(statement))
        except (UpdateVerificationError, CiphertextError) as exc:
            return Rejection(outcome.node_id, party, Reason.of(exc) if isinstance(exc, UpdateVerificationError)
                             else Reason.PAYLOAD_MISMATCH, str(exc), "cosign")
        return Cosignature(party, key, outcome.envelope.signature)

    def _check(self, outcome: PartialDecryption | Rejection, party: str, server_round: int, digest: bytes,
               root: bytes, chosen: tuple[str, ...]) -> PartialDecryption | Rejection:
        if isinstance(outcome, Rejection):
            return outcome
        try:
            if (outcome.sum_sha256, outcome.merkle_root) != (digest, root):
                raise CiphertextError("it decrypted another sum, or over other leaves")
            verify_partial(self.key.params, self.allow, self.domain, server_round, party, chosen, digest, root,
                           outcome.envelope, outcome.values, outcome.values.shape[0])
        except (UpdateVerificationError, CiphertextError) as exc:
            return Rejection(outcome.node_id, party, Reason.of(exc) if isinstance(exc, UpdateVerificationError)
                             else Reason.PAYLOAD_MISMATCH, str(exc), "decrypt")
        return outcome
