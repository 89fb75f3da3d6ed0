"""The server's side of a run: FedAvg over the connected clients, central evaluation, run artifacts."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedproof.config import RunConfig
from fedproof.data import load_dataset
from fedproof.errors import ClientsUnavailableError
from fedproof.model import make_model
from fedproof.rundir import MODEL_FILE, RoundMetrics, RunDirectory
from fl_server.evaluation import CentralEvaluator
from fl_server.recorder import RoundObserver, RoundRecorder
from fl_server.admission import Admission
from fl_server.credentials import load_credentials
from fl_server.lineage import Lineage, open_ledger
from fl_server.metrics import FederationMetrics
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
    ledger: LedgerSummary | None = None


@dataclass(frozen=True)
class LedgerSummary:
    contract: str
    """Address of the lineage contract ('' without a ledger)."""
    chain_id: int
    model_hash: str
    """SHA-256 of the final model file (hex), as recorded."""
    rounds_recorded: int
    pending: int
    """Round records not yet on chain (the node was unreachable): `fedproof ledger flush` sends them."""


def run_federation(grid: Grid, config: RunConfig, observer: RoundObserver | None = None) -> FederationResult:
    """Run ``config.rounds`` rounds of FedAvg on ``grid``, record their lineage and write the run directory."""
    started = time.monotonic()
    wait_for_clients(grid, config.clients, config.connect_timeout)
    run_dir, config = RunDirectory.reopen(config) if config.resume else RunDirectory.create(config)
    random.seed(config.seed)  # Flower samples clients with the global `random`
    dataset = load_dataset(config.data_dir or None)
    config, credentials = load_credentials(config, run_dir.path)
    config, contract = open_ledger(config, credentials.allow)
    run_dir.write_config(config)
    initial = ArrayRecord(make_model(dataset.num_classes, seed=config.seed).state_dict())
    done = 0
    if config.resume:  # after a crash: go on from the last round recorded, with its model
        lineage = Lineage(run_dir.path, config, contract)
        done, initial = lineage.resume(like=initial)
        random.seed(config.seed * 7_919 + done)
    else:
        lineage = Lineage(run_dir.path, config, contract, initial)
    metrics = FederationMetrics(config.metrics_port)
    recorder = RoundRecorder(run_dir, CentralEvaluator(dataset), _both(metrics.observe_round, observer or _none))
    recorder.rows.extend(run_dir.keep_rounds(done))
    # a crash between recording round `done` and writing its metrics row: evaluate its model again at the start
    first_row = 0 if done == 0 or any(r.round == done for r in recorder.rows) else done
    verifier = UpdateVerifier(credentials.allow, config.chain_id, config.contract_bytes(), config.run_id)
    strategy_kwargs = dict(
        admission=Admission(verifier),
        on_train_replies=recorder.observe_train_replies,
        on_rejected=_both(recorder.reject_update, lineage.rejected, metrics.reject),
        on_failed=_both(recorder.fail_round, lineage.failed),
        on_aggregated=lineage.aggregated,
        fraction_train=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=config.clients,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=recorder.aggregate_evaluate_metrics,
        round_offset=done,
    )
    if credentials.public is not None:
        committee = DecryptionCommittee(config.he_committee, credentials.public, config.seed, config.round_timeout)
        strategy: GatedFedAvg = EncryptedFedAvg(committee=committee, **strategy_kwargs)
    else:
        strategy = GatedFedAvg(**strategy_kwargs)
    # Clients get the run's settings with every message: the server is the single source of truth,
    # and it works the same under `flwr run` and `fedproof simulate`.
    settings = ConfigRecord(config.to_mapping())
    stopped = ""
    try:
        if config.rounds > done:
            strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=config.rounds - done,
                timeout=config.round_timeout,
                train_config=settings,
                evaluate_config=settings,
                evaluate_fn=lambda rnd, arrays: recorder.evaluate(rnd + done if rnd else first_row, arrays),
            )
    except AllBudgetsExhausted as exc:
        stopped = str(exc)
    lineage.final_model(run_dir.path / MODEL_FILE)
    pending = lineage.flush()
    seconds = time.monotonic() - started
    last = recorder.rows[-1] if recorder.rows else None
    ledger = LedgerSummary(config.ledger_contract, config.chain_id, lineage.model_hash, lineage.recorded, pending)
    run_dir.finish(
        {
            "rounds_completed": len(recorder.rows),
            "final_accuracy": last.accuracy if last else None,
            "final_loss": last.loss if last else None,
            "wall_seconds": seconds,
            "epsilon_by_client": recorder.epsilon_by_client,
            "stopped": stopped,
            "ledger": asdict(ledger),
        }
    )
    return FederationResult(
        config=config,
        run_dir=run_dir.path,
        rounds=recorder.rows,
        seconds=seconds,
        epsilon_by_client=recorder.epsilon_by_client,
        stopped=stopped,
        ledger=ledger,
    )


def _none(*args) -> None:
    return None


def _both(*handlers):
    def call(*args) -> None:
        for handler in handlers:
            handler(*args)

    return call


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
