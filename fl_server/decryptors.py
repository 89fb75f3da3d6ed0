"""Threshold decryption of a round's sum: t key holders each check the round and send a flooded partial
decryption; the server fuses them.

The request carries every admitted update (its signed envelope and ciphertexts), the set of t decryptors and
the digest of the sum the server computed; each holder recomputes the sum from the signed leaves and refuses
anything else (fl_client.threshold). Holders are drawn at random (seeded by run and round) from the key's
holders, contributors or not. If any of the t refuses, fails or does not answer, it is set aside and a new set
of t is asked (the Lagrange weights depend on the set), up to :data:`ATTEMPTS` times: so up to n - t holders
may drop out. Each partial must be signed by its holder over (sum digest, Merkle root of the leaves, the set,
the partial), and the fused values must lie in the scheme's range, or the round is void.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedproof.protocol import CONFIG_KEY, DECRYPT_SHARE, DecryptionRequest, partial_chunks, round_settings
from fedproof.replies import PartialDecryption, Reason, Rejection, decode_partial_reply
from fl_server.admission import Admitted
from fl_server.committee import CommitteeOutcome
from fl_server.keygen import FederationKey
from fl_server.exchange import exchange
from ledger.errors import UpdateVerificationError
from ledger.merkle import MerkleTree
from ledger.signing import PARTIAL_TAG, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.errors import CiphertextError
from privacy.threshold import check_partial, fuse, sum_digest

log = logging.getLogger(__name__)
ATTEMPTS = 3


@dataclass(frozen=True)
class ThresholdCommittee:
    key: FederationKey
    seed: int
    timeout: float
    allow: AllowList
    domain: Domain

    def decrypt(self, grid: Grid, server_round: int, settings: Mapping, admitted: list[Admitted],
                total: np.ndarray, length: int) -> CommitteeOutcome:
        key, params = self.key, self.key.params
        digest, root = sum_digest(total), MerkleTree([a.leaf.leaf for a in admitted]).root
        leaves = tuple((a.update.envelope, a.update.ciphertexts.chunks) for a in admitted)  # type: ignore[union-attr]
        party_of = {node: party for party, node in key.nodes.items()}
        live = sorted(key.nodes)
        random.Random(f"decryptors/{self.seed}/{server_round}").shuffle(live)
        config, rejected = round_settings(settings, server_round), []
        for _ in range(ATTEMPTS):
            if len(live) < key.threshold:
                break
            chosen = tuple(sorted(live[: key.threshold]))
            request = DecryptionRequest(chosen, digest, leaves)
            messages = [Message(request.put(RecordDict({CONFIG_KEY: config})), dst_node_id=key.nodes[p],
                                message_type=DECRYPT_SHARE, group_id=str(server_round)) for p in chosen]
            replies, missing = exchange(grid, messages, self.timeout, "decrypt")
            failed = list(missing)
            partials = []
            for reply in replies:
                party = party_of[reply.metadata.src_node_id]
                outcome = self._check(decode_partial_reply(reply, (total.shape[0], params.n)), party, server_round,
                                      digest, root, chosen)
                (failed if isinstance(outcome, Rejection) else partials).append(outcome)
            if not failed:
                values = fuse(params, total, [p.values for p in partials], length)
                if not np.all(np.abs(values) <= params.max_abs_value * 1.01):
                    return CommitteeOutcome(None, f"round {server_round}: the fused sum lies outside the scheme's "
                                                  "range (a partial decryption was wrong); the round is void",
                                            tuple(rejected))
                return CommitteeOutcome(values, "", tuple(rejected))
            for r in failed:
                log.warning("round %s: decryptor set aside: %s", server_round, r)
            rejected += failed
            gone = {party_of.get(r.node_id, r.client_id) for r in failed}
            live = [p for p in live if p not in gone]
        problems = "; ".join(str(r) for r in rejected[-4:]) or "no answer"
        return CommitteeOutcome(None, f"round {server_round}: fewer than {key.threshold} key holders decrypted the "
                                      f"sum ({problems}); the round is void and the model unchanged",
                                tuple(rejected))

    def _check(self, outcome: PartialDecryption | Rejection, party: str, server_round: int, digest: bytes,
               root: bytes, chosen: tuple[str, ...]) -> PartialDecryption | Rejection:
        if isinstance(outcome, Rejection):
            return outcome
        try:
            check_partial(self.key.params, outcome.values, outcome.values.shape[0])
            if (outcome.sum_sha256, outcome.merkle_root) != (digest, root):
                raise CiphertextError("it decrypted another sum, or over other leaves")
            chunks = partial_chunks(digest, root, chosen, outcome.values.astype("<u8").tobytes())
            verify_statement(self.allow, self.domain, outcome.envelope.fields, outcome.envelope.signature,
                             tag=PARTIAL_TAG, round=server_round, client_id=party,
                             payload_sha256=payload_digest(chunks))
        except (UpdateVerificationError, CiphertextError) as exc:
            return Rejection(outcome.node_id, party, Reason.of(exc) if isinstance(exc, UpdateVerificationError)
                             else Reason.PAYLOAD_MISMATCH, str(exc), "decrypt")
        return outcome
