"""Prometheus metrics of a running federation (``metrics-port`` in the run config; 0 = off).

Exposed: rounds done and failed, updates accepted and rejected (by reason code), round seconds, the global model's
accuracy, the largest epsilon spent and each client's (by client id: bounded by the registered clients), and
clients that declined because their budget is spent; scraped at ``http://<server>:<metrics-port>/metrics``.
``examples/monitoring`` has a Grafana dashboard and alerting rules over these names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedproof.core.protocol import BUDGET_EXHAUSTED, TRAIN
from fl_server.round import RoundResult


class FederationMetrics:
    def __init__(self, port: int, registry: CollectorRegistry | None = None, address: str = "127.0.0.1") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rounds = Counter("fedproof_rounds", "Rounds completed", registry=r)
        self.accepted = Counter("fedproof_updates_accepted", "Client updates aggregated", registry=r)
        self.rejected = Counter("fedproof_updates_rejected", "Client updates refused", ["reason"], registry=r)
        self.failed = Counter("fedproof_rounds_failed", "Rounds that left the model unchanged", registry=r)
        self.seconds = Histogram("fedproof_round_seconds", "Wall time of a round",
                                 buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.epsilon = Gauge("fedproof_epsilon_max", "Largest privacy spent by a client so far", registry=r)
        self.accuracy = Gauge("fedproof_accuracy", "Test accuracy of the global model", registry=r)
        self.client_epsilon = Gauge("fedproof_client_epsilon", "Privacy spent by a client so far (signed)",
                                    ["client"], registry=r)
        self.exhausted = Counter("fedproof_clients_budget_exhausted", "Clients that declined a round: budget spent",
                                 registry=r)
        if port:
            start_http_server(port, addr=address, registry=r)

    def observe(self, result: RoundResult) -> None:
        row = result.metrics
        self.exhausted.inc(sum(d.status == BUDGET_EXHAUSTED for d in result.declines))
        if result.stop:  # nothing happened in this round but the declines
            return
        self.rounds.inc()
        self.accepted.inc(len(result.admitted))
        for rejection in result.rejected(TRAIN):
            self.rejected.labels(reason=rejection.reason.value).inc()  # a bounded set of codes, as Prometheus wants
        for client, epsilon in result.privacy_spent.items():  # signed values only, of admitted (allowed) clients
            self.client_epsilon.labels(client=client).set(epsilon)
        if row is None:
            return
        self.seconds.observe(row.seconds)
        self.accuracy.set(row.accuracy)
        if row.epsilon_max is not None:
            self.epsilon.set(row.epsilon_max)
        if row.failed:
            self.failed.inc()
