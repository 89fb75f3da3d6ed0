"""Run a federation on one machine with Flower's simulation engine (Ray backend).

The ServerApp runs in this process (so the CLI sees rounds as they finish); each simulated client's
ClientApp runs in a Ray actor. ``num_cpus`` bounds how many run at once (one CPU each); ``ray_address``
joins an existing Ray cluster instead of starting a local one.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from fedproof.core.config import RunConfig
from fedproof.core.client_data import load_client_data
from fedproof.core.task import load_task
from fl_client.client_app import app as client_app
from fl_server.federation import FederationResult, RoundObserver
from fl_server.server_app import build_server_app


def backend_config(num_cpus: int | None = None, ray_address: str | None = None, verbose: bool = False,
                   gpus_per_client: float = 0.0) -> dict:
    """Ray's settings: one CPU per simulated client, and ``gpus_per_client`` of a GPU each (Flower's client
    resources: 0.25 runs four clients per GPU at once)."""
    init_args: dict = {"address": ray_address} if ray_address else {"num_cpus": num_cpus or os.cpu_count() or 1}
    init_args["log_to_driver"] = verbose  # client errors come back as Flower error replies anyway
    return {"client_resources": {"num_cpus": 1, "num_gpus": float(gpus_per_client)}, "init_args": init_args}


class _DropDeprecationNotice(logging.Filter):
    """``run_simulation`` logs a deprecation notice pointing at ``flwr run``; fedproof uses it on purpose
    (it keeps the ServerApp in this process, so the CLI sees rounds live) and supports ``flwr run`` too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def use_app(app_dir: Path) -> None:
    """Make an app project's modules (its task) importable in this process and in the workers it starts."""
    path = str(Path(app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH", "")) if p)


def preflight(config: RunConfig) -> None:
    """Refuse, before Ray starts, a run that cannot work: missing data, or DP settings that no client
    could honour (delta not below 1/n for the smallest client, a model Opacus rejects)."""
    task = load_task(config.task)
    dataset = task.dataset(config.data_dir or None)
    dp = config.dp_settings()
    if dp is not None:
        from privacy.dp import validate_model

        validate_model(task.model(config.model, dataset.num_classes).head)
        smallest = min(len(load_client_data(config, i, config.clients).train_y) for i in range(config.clients))
        dp.check_dataset(smallest)


def simulate(
    config: RunConfig,
    observer: RoundObserver | None = None,
    num_cpus: int | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
    app_dir: Path | None = None,
) -> FederationResult:
    """Run ``config`` in simulation and return the server's result; ``app_dir``: the app project (``fedproof new``)
    whose task the run names, importable here and in every Ray worker."""
    from flwr.simulation import run_simulation

    if app_dir is not None:
        use_app(app_dir)
    preflight(config)
    results: list[FederationResult] = []
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    flwr_logger = logging.getLogger("flwr")
    level, notice_filter = flwr_logger.level, _DropDeprecationNotice()
    flwr_logger.addFilter(notice_filter)
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(
                server_app=build_server_app(config, observer, results),
                client_app=client_app,
                num_supernodes=config.clients,
                backend_name="ray",
                backend_config=backend_config(num_cpus, ray_address, verbose, config.gpus_per_client),
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
        flwr_logger.removeFilter(notice_filter)
    if not results:
        raise RuntimeError("the simulation ended without a result; rerun with --verbose to see Flower's log")
    return results[0]
