"""The server's side of a run: FedAvg over the connected clients, central evaluation, run artifacts."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedproof.config import RunConfig
from fedproof.data import load_dataset
from fedproof.errors import ClientsUnavailableError
from fedproof.model import make_model
from fedproof.rundir import RoundMetrics, RunDirectory
from fl_server.evaluation import CentralEvaluator
from fl_server.recorder import RoundObserver, RoundRecorder
from fl_server.admission import Admission
from fl_server.credentials import load_credentials
from fl_server.secure_aggregation import DecryptionCommittee, EncryptedFedAvg
from fl_server.strategy import AllBudgetsExhausted, GatedFedAvg
from ledger.verification import UpdateVerifier


@dataclass(frozen=True)
class FederationResult:
    config: RunConfig
    run_dir: Path
    rounds: list[RoundMetrics]
    seconds: float
    epsilon_by_client: dict[str, float]
    stopped: str = ""
    """Why the run ended before its last round, if it did."""


def run_federation(grid: Grid, config: RunConfig, observer: RoundObserver | None = None) -> FederationResult:
    """Run ``config.rounds`` rounds of FedAvg on ``grid`` and write the run directory."""
    started = time.monotonic()
    wait_for_clients(grid, config.clients, config.connect_timeout)
    run_dir, config = RunDirectory.create(config)
    random.seed(config.seed)  # Flower samples clients with the global `random`
    dataset = load_dataset(config.data_dir or None)
    recorder = RoundRecorder(run_dir, CentralEvaluator(dataset), observer)
    config, credentials = load_credentials(config, run_dir.path)
    run_dir.write_config(config)
    verifier = UpdateVerifier(credentials.allow, config.chain_id, config.contract_bytes(), config.run_id)
    strategy_kwargs = dict(
        admission=Admission(verifier),
        on_train_replies=recorder.observe_train_replies,
        on_rejected=recorder.reject_update,
        on_failed=recorder.fail_round,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=config.clients,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=recorder.aggregate_evaluate_metrics,
    )
    if credentials.public is not None:
        committee = DecryptionCommittee(config.he_committee, credentials.public, config.seed, config.round_timeout)
        strategy: GatedFedAvg = EncryptedFedAvg(committee=committee, **strategy_kwargs)
    else:
        strategy = GatedFedAvg(**strategy_kwargs)
    # Clients get the run's settings with every message: the server is the single source of truth,
    # and it works the same under `flwr run` and `fedproof simulate`.
    settings = ConfigRecord(config.to_mapping())
    initial = ArrayRecord(make_model(dataset.num_classes, seed=config.seed).state_dict())
    stopped = ""
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=config.rounds,
            timeout=config.round_timeout,
            train_config=settings,
            evaluate_config=settings,
            evaluate_fn=recorder.evaluate,
        )
        final = result.arrays
    except AllBudgetsExhausted as exc:
        stopped, final = str(exc), recorder.last_arrays or initial
    run_dir.save_model(final.to_torch_state_dict(), metadata={"run_id": config.run_id, "round": str(len(recorder.rows))})
    seconds = time.monotonic() - started
    last = recorder.rows[-1] if recorder.rows else None
    run_dir.finish(
        {
            "rounds_completed": len(recorder.rows),
            "final_accuracy": last.accuracy if last else None,
            "final_loss": last.loss if last else None,
            "wall_seconds": seconds,
            "epsilon_by_client": recorder.epsilon_by_client,
            "stopped": stopped,
        }
    )
    return FederationResult(
        config=config,
        run_dir=run_dir.path,
        rounds=recorder.rows,
        seconds=seconds,
        epsilon_by_client=recorder.epsilon_by_client,
        stopped=stopped,
    )


def wait_for_clients(
    grid: Grid, expected: int, timeout: float, clock=time.monotonic, sleep=time.sleep, poll: float = 0.5
) -> None:
    """Return once ``expected`` clients are connected; raise a clear error after ``timeout`` seconds.

    FedAvg would wait for them forever; a mismatch between ``clients`` and the SuperNodes actually
    started (Flower's simulation defaults to 2) should fail the run with a message instead.
    """
    deadline = clock() + timeout
    while (connected := len(list(grid.get_node_ids()))) < expected:
        if clock() >= deadline:
            raise ClientsUnavailableError(
                f"only {connected} of the {expected} expected clients connected within {timeout:g} s. "
                f"Start more SuperNodes (simulation: --federation-config 'num-supernodes={expected}'), "
                f"or run with clients={connected}."
            )
        sleep(poll)
