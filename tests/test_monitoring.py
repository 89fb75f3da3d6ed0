"""The Grafana dashboard and the alerting rules name only metrics fedproof exports; Prometheus itself checks the
rules and scrapes a server's and a device's endpoints."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fl_client.drift_metrics import DriftCollector, serve
from fl_client.edge import DRIFT_LOG
from fl_server.metrics import FederationMetrics

MONITORING = Path(__file__).resolve().parents[1] / "examples" / "monitoring"
NAME = re.compile(r"\bfedproof_[a-z_]+")
NO_PROMETHEUS = "needs Debian's prometheus package (promtool, prometheus): `make setup` installs it"


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes (counters as <name>_total, histograms with their suffixes)."""
    names = set()
    for family in registry.collect():
        names |= {family.name} | {s.name for s in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def all_exported(tmp_path: Path) -> set[str]:
    server = FederationMetrics(0)
    device = CollectorRegistry()
    device.register(DriftCollector(tmp_path))
    return exported(server.registry) | exported(device)


def dashboard_names() -> set[str]:
    doc = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return {n for panel in doc["panels"] for target in panel["targets"] for n in NAME.findall(target["expr"])}


def test_every_metric_the_dashboard_and_the_rules_name_is_exported(tmp_path: Path) -> None:
    names = dashboard_names() | set(NAME.findall((MONITORING / "alerts.yml").read_text()))
    assert {"fedproof_accuracy", "fedproof_client_epsilon", "fedproof_updates_rejected_total",
            "fedproof_round_seconds_bucket", "fedproof_edge_drift_alarms_total"} <= names  # what the panels cover
    missing = names - all_exported(tmp_path)
    assert not missing, f"named but never exported: {sorted(missing)}"
    assert "fedproof_made_up" not in all_exported(tmp_path)  # the check can fail


def test_the_alerting_rules_and_the_prometheus_config_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, NO_PROMETHEUS
    for args in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # starts a real Prometheus
def test_a_real_prometheus_scrapes_a_server_and_a_device(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, NO_PROMETHEUS
    server_port, device_port, web_port = free_port(), free_port(), free_port()
    server = FederationMetrics(server_port)
    server.accuracy.set(0.86)
    server.client_epsilon.labels(client="3").set(2.5)
    (tmp_path / DRIFT_LOG).write_text(json.dumps({"time": 1.0, "artifact": "ab" * 32, "window": 300, "drift": True,
                                                  "covariate_drift": True, "label_drift": False, "ks_p": 0.001,
                                                  "mmd": 0.1, "mmd_p": 0.01, "labels_chi2": 1.0, "labels_p": 0.4,
                                                  "alpha": 0.01}) + "\n")
    serve(tmp_path, device_port)
    config = (MONITORING / "prometheus.yml").read_text().replace("scrape_interval: 15s", "scrape_interval: 1s")
    config = config.replace("127.0.0.1:9400", f"127.0.0.1:{server_port}").replace("127.0.0.1:9401",
                                                                                      f"127.0.0.1:{device_port}")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(MONITORING / "alerts.yml", tmp_path / "alerts.yml")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{web_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        def query(expr: str) -> list:
            url = f"http://127.0.0.1:{web_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                return json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]
            except OSError:
                return []

        deadline, found = time.monotonic() + 60, {}
        wanted = {"fedproof_accuracy": 0.86, 'fedproof_client_epsilon{client="3"}': 2.5,
                  "fedproof_edge_drift_windows_total": 1.0, 'fedproof_edge_drift_p_value{test="ks"}': 0.001}
        while time.monotonic() < deadline and len(found) < len(wanted):
            for expr in wanted:
                result = query(expr)
                if result:
                    found[expr] = float(result[0]["value"][1])
            time.sleep(0.5)
        assert found == wanted, (found, (tmp_path / "prometheus.log").read_text()[-2000:])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
