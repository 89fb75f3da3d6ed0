"""A device's drift and release, for Prometheus: what ``drift.jsonl`` and its channel and model records say,
read at each scrape (``fedproof edge monitor``).

``edge predict --monitor`` (or any program calling ``fl_client.edge.monitor``) appends one line per window; this
collector turns the log into metrics on loopback (by default), so the device keeps no state of its own and a
restart loses nothing. Only aggregates are exposed, as in the log: window counts, alarms, the last window's
p-values, and which artifact they refer to; and which release statement the device last acted on and which
artifact it runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from fl_client.edge import DRIFT_LOG, ArtifactRejected, Following, current_model

MAX_LOG_BYTES = 64 << 20
TESTS = {"ks": "ks_p", "mmd": "mmd_p", "labels": "labels_p"}


class DriftCollector(Collector):
    def __init__(self, install_dir: Path) -> None:
        self.install_dir = Path(install_dir)
        self.log = self.install_dir / DRIFT_LOG

    def entries(self) -> list[dict]:
        """The log's well-formed lines (a line cut short by a crash, or anything else, is skipped)."""
        try:
            if self.log.stat().st_size > MAX_LOG_BYTES:
                lines = self.log.read_bytes()[-MAX_LOG_BYTES:].decode(errors="replace").splitlines()[1:]
            else:
                lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) for k in TESTS.values()):
                out.append(entry)
        return out

    def collect(self) -> Iterator:
        entries = self.entries()
        windows = CounterMetricFamily("fedproof_edge_drift_windows", "Windows tested for drift on this device")
        alarms = CounterMetricFamily("fedproof_edge_drift_alarms", "Windows flagged as drift, by kind",
                                     labels=["kind"])
        p_values = GaugeMetricFamily("fedproof_edge_drift_p_value", "The last window's p-value, by test",
                                     labels=["test"])
        last = GaugeMetricFamily("fedproof_edge_drift_last_timestamp_seconds", "When the last window was tested")
        model = GaugeMetricFamily("fedproof_edge_drift_model", "The artifact the last window was tested against",
                                  labels=["artifact"])
        windows.add_metric([], len(entries))
        for kind in ("covariate_drift", "label_drift"):
            alarms.add_metric([kind.removesuffix("_drift")], sum(bool(e.get(kind)) for e in entries))
        if entries:
            newest = entries[-1]
            for test, key in TESTS.items():
                p_values.add_metric([test], float(newest[key]))
            last.add_metric([], float(newest.get("time", 0)))
            model.add_metric([str(newest.get("artifact", ""))[:64]], 1)
        yield from (windows, alarms, p_values, last, model, self.release())

    def release(self) -> GaugeMetricFamily:
        """The sequence number of the last release statement acted on, labelled by channel and the artifact run."""
        family = GaugeMetricFamily("fedproof_edge_release_sequence", "The last release statement this device acted "
                                   "on, by channel and the artifact it runs", labels=["channel", "artifact"])
        try:
            following, running = Following.load(self.install_dir), current_model(self.install_dir)
        except ArtifactRejected:  # a damaged record: no release series rather than a failed scrape
            return family
        if following is not None:
            family.add_metric([following.channel[:64], running.artifact_sha256 if running else ""],
                              following.sequence)
        return family


def serve(install_dir: Path, port: int, address: str = "127.0.0.1") -> CollectorRegistry:
    """Expose this device's drift on ``address:port`` (``/metrics``), until the process ends."""
    registry = CollectorRegistry()
    registry.register(DriftCollector(install_dir))
    start_http_server(port, addr=address, registry=registry)
    return registry
