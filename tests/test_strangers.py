"""A stock Flower ClientApp and its hostile variants join a simulated federation next to fedproof clients.

Their train replies are refused and their evaluate replies set aside, each with its reason code; the run
finishes every round with a finite model, and the codes appear in metrics.jsonl, the round bundles and
Prometheus.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedproof.core.config import RunConfig
from fedproof.core.rundir import RunDirectory
from fedproof.launch.simulation import backend_config
from fl_server.server_app import build_server_app
from ledger.bundle import RoundBundle

pytestmark = pytest.mark.slow

EXPECTED = {"stock": "unsigned", "nan": "non-finite", "wrong-shape": "wrong-shape", "extra-array": "wrong-shape",
            "no-count": "bad-example-count"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_strangers_are_refused_in_train_set_aside_in_evaluate_and_the_run_finishes(
        synthetic_dir: Path, tmp_path: Path, devnet, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.simulation import run_simulation

    import stock_client

    monkeypatch.setenv("PYTHONPATH", f"{Path(__file__).parent}:{Path(__file__).parents[1]}")  # for the Ray workers
    port = free_port()
    # 6 of 8 clients train each round (so at least one fedproof client does); the 2 left out may be asked to
    # evaluate, which is how a stranger's evaluate reply reaches the gate. Node ids are random in Flower's
    # simulation, so which are left out varies: over 5 rounds a stranger is left out at least once but
    # with probability (3/28)^5 ~ 1e-5.
    config = RunConfig(clients=8, rounds=5, fraction_train=0.75, data_dir=str(synthetic_dir), run_dir=str(tmp_path),
                       run_id="strangers", dp=False, he=False, ledger_url=devnet.url,
                       devnet_dir=str(devnet.data_dir), local_epochs=1, metrics_port=port)
    results: list = []
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=build_server_app(config, results=results), client_app=stock_client.mixed,
                       num_supernodes=config.clients, backend_name="ray", backend_config=backend_config(2))
    assert results, "the ServerApp did not finish"
    result = results[0]
    assert not result.stopped and [r.round for r in result.rounds] == [1, 2, 3, 4, 5]
    run = RunDirectory(result.run_dir)
    assert run.read()["summary"]["rounds_completed"] == 5
    rows = run.metrics()
    assert all(np.isfinite(r.accuracy) and np.isfinite(r.loss) and not r.failed for r in rows)
    assert all(r.train_clients >= 1 for r in rows)  # fedproof clients were aggregated every round

    refused: dict[str, int] = {}
    for row in rows:
        for code, count in row.rejected_reasons.items():
            refused[code] = refused.get(code, 0) + count
    assert set(refused) <= set(EXPECTED.values())  # no fedproof client refused, every stranger with its own code
    assert sum(refused.values()) >= 5 * 3 and len(refused) >= 3  # >= 3 strangers asked per round
    # a stranger's eval_loss/eval_acc reply is malformed; a fedproof client left out of a round's training was never
    # sent the model it is asked to evaluate, so it withholds its metrics
    assert sum(r.evaluate_rejected.get("malformed", 0) for r in rows) >= 1
    assert all(set(r.evaluate_rejected) <= {"malformed", "withheld"} for r in rows)

    bundles = [RoundBundle.from_bytes(p.read_bytes()) for p in sorted((result.run_dir / "ledger").glob("round-*.json"))]
    assert len(bundles) == 5
    codes = [line.split(":")[0] for b in bundles for line in b.rejected if not line.startswith("evaluate ")]
    assert sorted(set(codes)) == sorted(refused)
    assert all(u.fields.client_id in ("0", "1", "2") for b in bundles for u in b.updates)

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for code, count in refused.items():
        assert f'fedproof_updates_rejected_total{{reason="{code}"}} {float(count)}' in scraped
    assert json.loads((result.run_dir / "run.json").read_text())["summary"]["stopped"] == ""
