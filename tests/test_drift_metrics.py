"""A device's drift log, scraped as Prometheus metrics (aggregates only)."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from fl_client.drift_metrics import DriftCollector, serve
from fl_client.edge import DRIFT_LOG


def window(drift: bool, p: float, artifact: str = "ab" * 32) -> str:
    return json.dumps({"time": 1700000000.0, "artifact": artifact, "window": 200, "drift": drift,
                       "covariate_drift": drift, "label_drift": False, "ks_p": p, "mmd": 0.01, "mmd_p": p,
                       "labels_chi2": 3.0, "labels_p": 0.5, "alpha": 0.01})


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_the_log_becomes_counters_and_the_last_windows_p_values(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(DriftCollector(tmp_path))
    assert scrape(registry)["fedproof_edge_drift_windows_total"] == 0  # no log yet: zeros, no error
    (tmp_path / DRIFT_LOG).write_text("\n".join([window(False, 0.4), window(True, 0.001), '{"cut sh']) + "\n")
    metrics = scrape(registry)
    assert metrics["fedproof_edge_drift_windows_total"] == 2  # the line cut short by a crash is skipped
    assert metrics['fedproof_edge_drift_alarms_total{kind="covariate"}'] == 1
    assert metrics['fedproof_edge_drift_alarms_total{kind="label"}'] == 0
    assert metrics['fedproof_edge_drift_p_value{test="ks"}'] == 0.001
    assert metrics[f'fedproof_edge_drift_model{{artifact="{"ab" * 32}"}}'] == 1
    assert not any(name.startswith("fedproof_edge_release") for name in metrics)  # follows no channel


def test_the_release_a_following_device_acted_on_is_exported(tmp_path: Path) -> None:
    from dataclasses import asdict

    from fl_client.edge import CURRENT, Following, Installed

    registry = CollectorRegistry()
    registry.register(DriftCollector(tmp_path))
    Following("production", "device-1", 7).save(tmp_path)
    assert scrape(registry)['fedproof_edge_release_sequence{artifact="",channel="production"}'] == 7
    (tmp_path / CURRENT).write_text(json.dumps(asdict(Installed("cd" * 32, "ef" * 32, 3, 10, "0x01", "x.onnx"))))
    assert scrape(registry)[f'fedproof_edge_release_sequence{{artifact="{"cd" * 32}",channel="production"}}'] == 7
    (tmp_path / CURRENT).write_text("{not a record")
    assert not any(name.startswith("fedproof_edge_release_sequence{") for name in scrape(registry))


def test_a_device_serves_its_drift_on_loopback(tmp_path: Path) -> None:
    (tmp_path / DRIFT_LOG).write_text(window(True, 0.002) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve(tmp_path, port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "fedproof_edge_drift_windows_total 1.0" in body and 'fedproof_edge_drift_p_value{test="mmd"} 0.002' in body
