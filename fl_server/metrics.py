"""Prometheus metrics of a running federation (``metrics-port`` in the run config; 0 = off).

Exposed: rounds done, updates accepted and rejected (by reason), round seconds, the largest epsilon spent,
and the round each gauge refers to; scraped at ``http://<server>:<metrics-port>/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedproof.rundir import RoundMetrics


class FederationMetrics:
    def __init__(self, port: int, registry: CollectorRegistry | None = None) -> None:
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
        if port:
            start_http_server(port, registry=r)

    def observe_round(self, row: RoundMetrics) -> None:
        self.rounds.inc()
        self.accepted.inc(row.train_clients)
        self.seconds.observe(row.seconds)
        self.accuracy.set(row.accuracy)
        if row.epsilon_max is not None:
            self.epsilon.set(row.epsilon_max)
        if row.failed:
            self.failed.inc()

    def reject(self, server_round: int, reason: str) -> None:
        self.rejected.labels(reason=_reason(reason)).inc()


def _reason(text: str) -> str:
    """A short label for a rejection message (bounded label values, as Prometheus wants)."""
    for label, needle in (("bad-signature", "signature"), ("replayed", "signed for"), ("unknown-client", "allow-list"),
                          ("revoked-client", "revoked"), ("duplicate", "second update"),
                          ("payload-mismatch", "does not hash"), ("corrupt-ciphertext", "ciphertext"),
                          ("unsigned", "not signed")):
        if needle in text:
            return label
    return "other"
