"""The server's side of a run: the loop over rounds (each one ``fl_server.round.run_round``), and the run's files."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Mapping
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedproof.core.config import ClientSettings, RunConfig, Scalar
from fedproof.base.errors import ClientsUnavailableError
from fedproof.core.protocol import PLAIN_MAX_ABS_DELTA
from fedproof.core.task import load_task
from fedproof.core.rundir import MODEL_FILE, RoundMetrics, RunDirectory
from fl_server.admission import Admission
from fl_server.decryptors import ThresholdCommittee
from fl_server.committee import make_key, redraw, still_held
from fl_server.evaluation import CentralEvaluator
from fl_server.exchange import shares_machine
from fl_server.lineage import Lineage
from fl_server.metrics import FederationMetrics
from fl_server.round import RoundPlan, RoundResult, run_round
from fl_server.startup import start_up
from fl_server.tracking import RunTracker
from privacy.policy import PrivacyPolicy
from privacy.user_dp import next_clip
from ledger.verification import UpdateVerifier


class RoundObserver(Protocol):
    """Sees each round's metrics row as it is written (the CLI's progress bar)."""

    def __call__(self, row: RoundMetrics) -> None: ...


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
    resolved: Mapping[str, Scalar] = field(default_factory=dict)
    """What start-up resolved beside ``config`` (key set, chain, W: ``StartUp.resolved``)."""

    def settings(self) -> dict[str, Scalar]:
        """The run's settings as ``run.json`` saves them: the user's, with what start-up resolved."""
        return {**self.config.to_mapping(), **self.resolved}


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


@dataclass
class RoundSink:
    """The one place a round's result goes: Prometheus, then (unless the run stops there) the lineage on chain,
    ``metrics.jsonl``, MLflow and the caller's progress; and the privacy each client signed."""

    lineage: Lineage
    run_dir: RunDirectory
    tracker: RunTracker
    prometheus: FederationMetrics
    observer: RoundObserver | None
    rows: list[RoundMetrics]
    epsilon_by_client: dict[str, float] = field(default_factory=dict)

    def __call__(self, result: RoundResult) -> None:
        self.epsilon_by_client.update(result.privacy_spent)
        self.prometheus.observe(result)
        if result.stop:
            return
        self.lineage.record(result)
        assert result.metrics is not None
        self.rows.append(result.metrics)
        self.run_dir.append_metrics(result.metrics)
        self.tracker.round(result.metrics, self.lineage.last_bundle_sha256)
        if self.observer is not None:
            self.observer(result.metrics)


def run_federation(grid: Grid, config: RunConfig, observer: RoundObserver | None = None) -> FederationResult:
    """Run rounds ``done + 1 .. config.rounds`` on ``grid`` (``done`` is 0, or the last recorded round when
    resuming), record each round's lineage, and write the run directory."""
    started = time.monotonic()
    wait_for_clients(grid, config.clients, config.connect_timeout)
    run_dir, config = RunDirectory.reopen(config) if config.resume else RunDirectory.create(config)
    task = load_task(config.task)
    dataset = task.dataset(config.data_dir or None)
    start = start_up(config, run_dir.path)  # keys, ledger, W: found once, beside the settings (never into them)
    run_dir.write_config(config, start.resolved())
    model = ArrayRecord(task.model(config.model, dataset.num_classes, seed=config.seed).state_dict())
    if config.resume:  # after a crash: go on from the last round recorded, with its model
        lineage = Lineage(run_dir.path, config, start.contract, domain=start.domain)
        done, model = lineage.resume(like=model)
    else:
        lineage, done = Lineage(run_dir.path, config, start.contract, model, domain=start.domain), 0
    prometheus = FederationMetrics(config.metrics_port, address=config.metrics_address)
    tracker = RunTracker(config, run_dir.path, start.domain)
    evaluate = CentralEvaluator(dataset, task.model(config.model, dataset.num_classes))
    rows = run_dir.keep_rounds(done)
    if done and not any(r.round == done for r in rows):  # crashed between recording round `done` and its row
        loss, accuracy = evaluate(model)
        rows.append(RoundMetrics(round=done, accuracy=accuracy, loss=loss, seconds=0.0))
        run_dir.append_metrics(rows[-1])
    domain = start.domain
    # what clients are sent with every message: their settings only, and paths only to clients on this machine
    sent = ClientSettings.of(config, shares_machine(grid), start.resolved()).to_record()
    # how many clients are registered, as the devices count them (a simulation: the run's; devices: their allow-list)
    threshold, registered = None, config.clients if shares_machine(grid) else len(start.allow.keys)
    if config.he:  # the clients make the run's key now; no party ever holds all of it
        key = make_key(grid, sent, start.allow, domain, threshold=config.he_threshold, timeout=config.round_timeout,
                       weight_scale=start.weight_scale, first_round=done + 1, committee=config.committee,
                       colluding_share=config.colluding_share, registered=registered)
        # t and the holders go on chain before any round: auditors read them there
        lineage.record_key(key.signed, key.draw)
        threshold = ThresholdCommittee(key, config.seed, config.round_timeout, start.allow, domain)
    plan = RoundPlan(
        settings=sent,
        fraction_train=config.fraction_train,
        fraction_evaluate=0.0 if config.dp else config.fraction_evaluate,  # DP clients withhold metrics anyway
        seed=config.seed,
        timeout=config.round_timeout,
        admission=Admission(UpdateVerifier(start.allow, domain)),
        evaluate=evaluate,
        max_abs_delta=PLAIN_MAX_ABS_DELTA,
        threshold=threshold,
        server_lr=config.server_lr,
        check_in=config.user_level,
        count_slots=config.count_slots,
    )
    sink = RoundSink(lineage, run_dir, tracker, prometheus, observer, rows)
    stopped = ""
    schedule: dict[int, int] = {}  # user-level DP: the round each device said it takes part in next
    for server_round in range(done + 1, config.rounds + 1):
        if plan.threshold is not None and not still_held(grid, plan.threshold.key):  # members went offline
            key = redraw(grid, sent, start.allow, domain, plan.threshold.key, timeout=config.round_timeout,
                         first_round=server_round, committee=config.committee,
                         colluding_share=config.colluding_share, registered=registered)
            lineage.record_key(key.signed, key.draw)
            plan = replace(plan, threshold=replace(plan.threshold, key=key))
        result = run_round(grid, plan, server_round, model, schedule)
        schedule.update(result.next_rounds)
        if result.unclipped_share is not None:  # adaptive clipping: the next round's clip, from this round's count
            plan = replace(plan, settings=adapted_clip(plan.settings, result.unclipped_share, config))
        sink(result)
        if result.stop:
            stopped = result.stop
            break
        model = result.current
    epsilon_by_client = sink.epsilon_by_client
    lineage.final_model(run_dir.path / MODEL_FILE)
    pending = lineage.flush()
    seconds = time.monotonic() - started
    last = rows[-1] if rows else None
    ledger = LedgerSummary(start.resolved()["ledger-contract"], domain.chain_id, lineage.model_hash, lineage.recorded,
                           pending)
    run_dir.finish(
        {
            "rounds_completed": len(rows),
            "final_accuracy": last.accuracy if last else None,
            "final_loss": last.loss if last else None,
            "wall_seconds": seconds,
            "epsilon_by_client": epsilon_by_client,
            "stopped": stopped,
            "ledger": asdict(ledger),
        }
    )
    tracker.finish(run_dir.path, lineage.outbox.receipts(), stopped)
    return FederationResult(config=config, run_dir=run_dir.path, rounds=rows, seconds=seconds,
                            epsilon_by_client=epsilon_by_client, stopped=stopped, ledger=ledger,
                            resolved=start.resolved())


def adapted_clip(settings: Mapping[str, Scalar], unclipped_share: float, config: RunConfig) -> ConfigRecord:
    """The settings with the next round's update clip (Andrew et al.'s step toward ``clip-quantile``), kept within
    the clips a default device policy accepts. Any clip is safe for the devices: their noise scales with it."""
    default = PrivacyPolicy()
    clip = next_clip(float(settings["update-clip"]), unclipped_share, config.clip_quantile, config.clip_lr)
    return ConfigRecord({**settings, "update-clip": min(default.max_clip, max(default.min_clip, clip))})


def wait_for_clients(
    grid: Grid, expected: int, timeout: float, clock=time.monotonic, sleep=time.sleep, poll: float = 0.5
) -> None:
    """Return once ``expected`` clients are connected; raise a clear error after ``timeout`` seconds.

    Rounds would otherwise sample from whoever happens to be connected; a mismatch between ``clients`` and
    the SuperNodes actually started (Flower's simulation defaults to 2) should fail the run with a message.
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
