"""Turns each round's results into a metrics row: central evaluation, plus the clients' aggregated metrics.

It plugs into FedAvg through its documented hooks (``train_metrics_aggr_fn``, ``evaluate_metrics_aggr_fn``,
``evaluate_fn``) rather than subclassing, so it composes with any strategy that later issues add; the
strategy also hands it every answered train reply (``observe_train_replies``), declined ones included,
for privacy reporting. FedAvg calls them in this order each round: train replies, train aggregation,
client-evaluate aggregation, then ``evaluate_fn``, so the row is complete when ``evaluate_fn`` runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedproof.protocol import BUDGET_EXHAUSTED, CIPHERTEXTS_KEY, HEADER_KEY, ClientReport
from fedproof.rundir import RoundMetrics, RunDirectory


class RoundObserver(Protocol):
    def __call__(self, row: RoundMetrics) -> None: ...


#: Evaluates global weights, returning (loss, accuracy).
Evaluator = Callable[[ArrayRecord], tuple[float, float]]


class RoundRecorder:
    def __init__(self, run_dir: RunDirectory, evaluator: Evaluator, observer: RoundObserver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir = run_dir
        self.evaluator = evaluator
        self.observer = observer
        self.clock = clock
        self.rows: list[RoundMetrics] = []
        self.epsilon_by_client: dict[str, float] = {}
        """Latest privacy spent reported by each client."""
        self.last_arrays: ArrayRecord | None = None
        self._round_start = clock()
        self._reset()

    def _reset(self) -> None:
        self._train: MetricRecord | None = None
        self._eval: MetricRecord | None = None
        self._train_clients = self._eval_clients = self._exhausted = 0
        self._epsilons: list[float] = []
        self._rejected = 0
        self._failed = ""
        self._upload: list[float] = []

    def observe_train_replies(self, server_round: int, replies: list[RecordDict]) -> None:
        """Every answered train reply, declined ones included: privacy spent and budget statuses."""
        for content in replies:
            report = ClientReport.from_reply(content)
            if report is None:
                continue
            self._exhausted += report.status == BUDGET_EXHAUSTED
            if (size := upload_bytes_per_param(content)) is not None:
                self._upload.append(size)
            if report.epsilon is not None:
                self._epsilons.append(report.epsilon)
                self.epsilon_by_client[report.client_id] = report.epsilon

    def reject_update(self, server_round: int, reason: str) -> None:
        self._rejected += 1

    def fail_round(self, server_round: int, reason: str) -> None:
        self._failed = reason

    def aggregate_train_metrics(self, replies: list[RecordDict], weight_key: str) -> MetricRecord:
        self._train, self._train_clients = aggregate_metricrecords(replies, weight_key), len(replies)
        return self._train

    def aggregate_evaluate_metrics(self, replies: list[RecordDict], weight_key: str) -> MetricRecord:
        self._eval, self._eval_clients = aggregate_metricrecords(replies, weight_key), len(replies)
        return self._eval

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = self.evaluator(arrays)
        self.last_arrays = arrays
        now = self.clock()
        if server_round > 0:
            row = RoundMetrics(
                round=server_round,
                accuracy=accuracy,
                loss=loss,
                seconds=now - self._round_start,
                train_loss=_get(self._train, "train_loss"),
                val_accuracy=_get(self._eval, "val_accuracy"),
                val_loss=_get(self._eval, "val_loss"),
                train_clients=self._train_clients,
                evaluate_clients=self._eval_clients,
                epsilon_max=max(self._epsilons) if self._epsilons else None,
                epsilon_mean=sum(self._epsilons) / len(self._epsilons) if self._epsilons else None,
                budget_exhausted=self._exhausted,
                rejected_updates=self._rejected,
                upload_bytes_per_param=sum(self._upload) / len(self._upload) if self._upload else None,
                client_train_seconds=_get(self._train, "train-seconds"),
                client_secure_seconds=_get(self._train, "secure-seconds"),
                failed=self._failed,
            )
            self.rows.append(row)
            self.run_dir.append_metrics(row)
            if self.observer is not None:
                self.observer(row)
        self._reset()
        self._round_start = now
        return MetricRecord({"accuracy": accuracy, "loss": loss})


def _get(record: MetricRecord | None, key: str) -> float | None:
    if record is None or key not in record:
        return None
    return float(record[key])  # type: ignore[arg-type]


def upload_bytes_per_param(content: RecordDict) -> float | None:
    """Bytes per parameter of the update in a train reply: its ciphertexts, or its plaintext arrays."""
    if CIPHERTEXTS_KEY in content.array_records and HEADER_KEY in content.config_records:
        size = sum(len(a.data) for a in content.array_records[CIPHERTEXTS_KEY].values())
        count = content.config_records[HEADER_KEY].get("num-values")
        return size / count if isinstance(count, int) and count > 0 else None
    arrays = content.array_records.get("arrays")
    if arrays is None:
        return None
    count = sum(int(np.prod(a.shape)) for a in arrays.values())
    return sum(len(a.data) for a in arrays.values()) / count if count else None
