"""FedAvg that knows a client may decline to train (its privacy budget is spent).

Such a reply carries a status and no update: it is reported, never aggregated, and not a failure.
When every client asked in a round declines, the run is over: :class:`AllBudgetsExhausted` ends it
cleanly with that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedproof.protocol import BUDGET_EXHAUSTED, ClientReport


class AllBudgetsExhausted(Exception):
    """Every client sampled in a round declined because its privacy budget is spent."""


class BudgetAwareFedAvg(FedAvg):
    def __init__(self, *, on_train_replies: Callable[[int, list[RecordDict]], None] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.on_train_replies = on_train_replies

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answered = [m.content for m in replies if not m.has_error()]
        if self.on_train_replies is not None:
            self.on_train_replies(server_round, answered)
        declined = [m for m in replies if not m.has_error() and _declined(m.content)]
        if answered and len(declined) == len(answered) and len(answered) == len(replies):
            raise AllBudgetsExhausted(
                f"all {len(declined)} clients asked in round {server_round} have exhausted their privacy budget"
            )
        return self._aggregate(server_round, [m for m in replies if m not in declined])

    def _aggregate(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the updates of the clients that trained: plain FedAvg here; subclasses change only this."""
        return super().aggregate_train(server_round, replies)


def _declined(content: RecordDict) -> bool:
    report = ClientReport.from_reply(content)
    return report is not None and report.status == BUDGET_EXHAUSTED
