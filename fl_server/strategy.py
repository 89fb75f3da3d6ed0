"""FedAvg behind fedproof's gate: declined clients set aside, unsigned or forged updates refused, aggregates reported.

* A client may decline to train (its privacy budget is spent): its reply carries a status and no update; it is
  reported, never aggregated, and not a failure. When every client asked in a round declines, the run is
  over: :class:`AllBudgetsExhausted` ends it cleanly with that reason.
* With an :class:`~fl_server.admission.Admission`, every update must carry a valid signature from an allowed
  client, for this run and round, once; a rejected update is reported (``on_rejected``) and never reaches
  the aggregate.
* Each new global model is reported with its parent and the admitted updates (``on_aggregated``), which is
  what the lineage records.

Subclasses change only :meth:`_aggregate` (plain FedAvg here; encrypted in ``secure_aggregation``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedproof.errors import UpdateRejected
from fedproof.protocol import BUDGET_EXHAUSTED, ClientReport
from fl_server.admission import Admission
from ledger.bundle import SignedUpdate
from ledger.errors import UpdateVerificationError

log = logging.getLogger(__name__)

Aggregated = Callable[[int, ArrayRecord, ArrayRecord, list[SignedUpdate]], None]


class AllBudgetsExhausted(Exception):
    """Every client sampled in a round declined because its privacy budget is spent."""


class GatedFedAvg(FedAvg):
    def __init__(
        self,
        *,
        admission: Admission | None = None,
        on_train_replies: Callable[[int, list[RecordDict]], None] | None = None,
        on_rejected: Callable[[int, str], None] | None = None,
        on_failed: Callable[[int, str], None] | None = None,
        on_aggregated: Aggregated | None = None,
        round_offset: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.round_offset = round_offset
        """Rounds already done before this start (a resumed run): Flower counts from 1, the run goes on."""
        self.admission = admission
        self.on_train_replies = on_train_replies or (lambda rnd, replies: None)
        self.on_rejected = on_rejected or (lambda rnd, why: None)
        self.on_failed = on_failed or (lambda rnd, why: None)
        self.on_aggregated = on_aggregated or (lambda rnd, parent, new, admitted: None)
        self._round: tuple[ArrayRecord, ConfigRecord, Grid] | None = None
        self._failed = False

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = super().configure_train(server_round + self.round_offset, arrays, config, grid)
        self._round = (arrays, ConfigRecord(dict(config)), grid)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round + self.round_offset, replies)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = list(replies)
        answered = [m for m in replies if not m.has_error()]
        self.on_train_replies(server_round, [m.content for m in answered])
        declined = [m for m in answered if _declined(m.content)]
        if answered and len(declined) == len(answered) == len(replies):
            raise AllBudgetsExhausted(
                f"all {len(declined)} clients asked in round {server_round} have exhausted their privacy budget"
            )
        admitted: dict[int, SignedUpdate | None] = {}
        declined_ids = {id(m) for m in declined}
        for msg in replies:
            if id(msg) in declined_ids:
                continue
            if msg.has_error() or self.admission is None:
                admitted[id(msg)] = None
                continue
            try:
                admitted[id(msg)] = self.admission.admit(server_round, msg)
            except (UpdateRejected, UpdateVerificationError) as exc:
                self.reject(server_round, msg, exc)
        self._failed = False
        arrays, metrics, used = self._aggregate(server_round, [m for m in replies if id(m) in admitted])
        if arrays is None and not self._failed:
            self.fail(server_round, f"round {server_round}: no update could be aggregated; the model is unchanged")
        if arrays is not None and self._round is not None:
            leaves = [a for m in used if (a := admitted.get(id(m))) is not None]
            self.on_aggregated(server_round, self._round[0], arrays, leaves)
        return arrays, metrics

    def fail(self, server_round: int, reason: str) -> None:
        """The round produces no new model (reported once, with the reason)."""
        self._failed = True
        log.error("%s", reason)
        self.on_failed(server_round, reason)

    def reject(self, server_round: int, msg: Message, exc: Exception) -> None:
        report = ClientReport.from_reply(msg.content)
        reason = f"client {report.client_id if report else msg.metadata.src_node_id}: {exc}"
        log.warning("round %s: update rejected: %s", server_round, reason)
        self.on_rejected(server_round, reason)

    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        """Aggregate the admitted updates; also return the replies that went into the aggregate."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return arrays, metrics, [m for m in replies if not m.has_error()]


def _declined(content: RecordDict) -> bool:
    report = ClientReport.from_reply(content)
    return report is not None and report.status == BUDGET_EXHAUSTED
