"""FedAvg over encrypted updates: the server adds ciphertexts, a committee of clients decrypts only the sum.

Each client sends ``n_k * delta_k`` encrypted and ``n_k`` in the clear. The server checks and adds each update
to a running :class:`~privacy.he.EncryptedSum` (a malformed or corrupt one is rejected alone; the round goes
on), then asks a committee of k of the round's contributors to decrypt the sum. It accepts the result only if
every member returns the same aggregate within the CKKS error bound, and sets
``global + sum / sum(n_k)``. The server holds a :class:`~privacy.he.PublicContext` only: it has no key and
learns the counts and the decrypted sum, never one client's update.
"""

from __future__ import annotations

import logging
import random

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedproof.errors import (
    AggregationError,
    CommitteeDisagreement,
    CommitteeUnavailable,
    UpdateRejected,
)
from fedproof.protocol import DECRYPT, SUM_KEY, EncryptedPayload
from fedproof.weights import flatten, num_values, unflatten
from fl_server.admission import Admission
from fl_server.strategy import GatedFedAvg
from ledger.errors import UpdateVerificationError
from privacy.errors import CiphertextError
from privacy.he import PublicContext, release_tolerance

log = logging.getLogger(__name__)


class DecryptionCommittee:
    """Draws k of a round's contributors at random, has them decrypt a sum, and checks they agree.

    A member that fails or does not answer is replaced by another contributor, until k answers are in or
    nobody is left (:class:`CommitteeUnavailable`). Answers that differ by more than the CKKS release
    tolerance fail the round (:class:`CommitteeDisagreement`).
    """

    def __init__(self, size: int, public: PublicContext, seed: int, timeout: float) -> None:
        self.size, self.public, self.seed, self.timeout = size, public, seed, timeout

    def decrypt(self, grid: Grid, payload: EncryptedPayload, contributors: list[int], server_round: int,
                settings: ConfigRecord, admission: Admission | None = None) -> np.ndarray:
        pool = sorted(contributors)
        random.Random(self.seed * 1_000_003 + server_round).shuffle(pool)
        wanted = min(self.size, len(pool))
        answers: dict[int, np.ndarray] = {}
        problems: list[str] = []
        while len(answers) < wanted:
            missing = wanted - len(answers)
            if len(pool) < missing:
                raise CommitteeUnavailable(
                    f"round {server_round}: only {len(answers)} of {wanted} committee members decrypted the sum "
                    f"({'; '.join(problems) or 'no answer'})"
                )
            asked, pool = pool[:missing], pool[missing:]
            messages = [
                Message(payload.put(RecordDict({"config": settings})), dst_node_id=node, message_type=DECRYPT,
                        group_id=str(server_round))
                for node in asked
            ]
            replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=self.timeout)}
            for node in asked:
                try:
                    values = _decrypted(replies.get(node), payload.num_values)
                    if admission is not None:
                        admission.check_decryption(server_round, replies[node], values.tobytes())
                    answers[node] = values
                except (UpdateRejected, UpdateVerificationError) as exc:
                    problems.append(f"node {node}: {exc}")
                    log.warning("round %s: committee member %s replaced: %s", server_round, node, exc)
        return _agreed(answers, release_tolerance(self.public.params, payload.num_summed), server_round)


def _decrypted(reply: Message | None, length: int) -> np.ndarray:
    if reply is None:
        raise UpdateRejected("no reply in time")
    if reply.has_error():
        raise UpdateRejected(f"error {reply.error.code}: {reply.error.reason}")
    record = reply.content.array_records.get(SUM_KEY)
    if record is None or SUM_KEY not in record:
        raise UpdateRejected("reply carries no decrypted sum")
    values = record[SUM_KEY].numpy()
    if values.shape != (length,) or not np.all(np.isfinite(values)):
        raise UpdateRejected(f"decrypted sum must be {length} finite values, got shape {values.shape}")
    return values.astype(np.float64)


def _agreed(answers: dict[int, np.ndarray], tolerance: float, server_round: int) -> np.ndarray:
    nodes = sorted(answers)
    first = answers[nodes[0]]
    for node in nodes[1:]:
        gap = float(np.abs(answers[node] - first).max())
        if gap > tolerance:
            raise CommitteeDisagreement(
                f"round {server_round}: committee members {nodes[0]} and {node} decrypted sums differing by "
                f"{gap:.3g} > tolerance {tolerance:.3g}; the round is void and the model unchanged"
            )
    return first


class EncryptedFedAvg(GatedFedAvg):
    """FedAvg whose clients send encrypted updates; the server sums them without being able to read them."""

    def __init__(self, *, committee: DecryptionCommittee, **kwargs) -> None:
        super().__init__(**kwargs)
        self.committee = committee

    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        assert self._round is not None, "aggregate_train before configure_train"
        global_arrays, settings, grid = self._round
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        total = self.committee.public.new_sum(num_values(global_arrays))
        accepted: list[Message] = []
        examples = 0
        for msg in valid:
            try:
                count = _num_examples(msg.content)
                total.add(EncryptedPayload.take(msg.content).chunks)
            except (UpdateRejected, CiphertextError) as exc:
                self.reject(server_round, msg, exc)
                continue
            accepted.append(msg)
            examples += count
        if not accepted:
            return None, None, []
        metrics = self.train_metrics_aggr_fn([m.content for m in accepted], self.weighted_by_key)
        try:
            if examples > total.params.max_total_examples:
                raise AggregationError(f"round {server_round}: {examples} examples exceed what the CKKS parameters "
                                       f"can sum ({total.params.max_total_examples})")
            summed = EncryptedPayload(tuple(total.serialize()), total.length, total.count)
            contributors = [m.metadata.src_node_id for m in accepted]
            values = self.committee.decrypt(grid, summed, contributors, server_round, settings, self.admission)
        except AggregationError as exc:
            self.fail(server_round, str(exc))
            return None, metrics, []
        return unflatten(flatten(global_arrays) + values / examples, global_arrays), metrics, accepted


def _num_examples(content: RecordDict) -> int:
    metrics = content.metric_records.get("metrics")
    count = metrics.get("num-examples") if metrics is not None else None
    if not isinstance(count, int) or count < 1:
        raise UpdateRejected("reply lacks a positive integer num-examples")
    return count
