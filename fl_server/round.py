"""One federated round, top to bottom, as plain values: sample, send, decode, admit, aggregate, evaluate.

    sample nodes (seeded by run and round)
      -> send `train` (global model + settings)          fl_server.exchange (Grid push + pull)
      -> decode each reply                               fedproof.replies: Update | Declined | Rejection
      -> all asked declined? the run is over             RoundResult.stop
      -> admit each update                               fl_server.admission: signature, allow-list, replay
      -> HE: the admitted commitments are frozen; each
         contributor reveals its ciphertexts to that set     fl_server.reveal
      -> aggregate                                       fl_server.aggregation (plain) or, under HE, add
                                                         ciphertexts + t key holders decrypt the verified sum
                                                         (fl_server.decryptors)
      -> new model = parent + sum(n_k delta_k) / sum(n_k), or None with the failure reason
      -> HE: t key holders recompute it and co-sign      fl_server.decryptors (no t signatures: void)
      -> send `evaluate` (the parent: the model they were
         sent) to the nodes not refused                  decode each reply: Evaluation | Rejection
      -> central evaluation of the resulting model
      -> RoundResult (frozen): what the lineage, metrics.jsonl, Prometheus and the progress bar consume

Flower provides the transport (``Grid``) and the records; everything else is here. No reply can raise out of
this function: every one becomes a value, a rejection with a reason code at worst.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedproof.protocol import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    CONFIG_KEY,
    EVALUATE,
    TRAIN,
    SignedEnvelope,
    round_settings,
)
from fedproof.replies import (
    Declined,
    Evaluation,
    ModelSpec,
    Rejection,
    Update,
    decode_evaluate_reply,
    decode_train_reply,
)
from fedproof.rundir import RoundMetrics
from fl_server.admission import Admission, Admitted
from fedproof.weights import apply_mean, hash_model
from fl_server.aggregation import plain_sum, threshold_sum
from fl_server.decryptors import Endorsement, ThresholdCommittee
from fl_server.exchange import exchange
from fl_server.reveal import reveal_updates
from ledger.bundle import SignedUpdate

log = logging.getLogger(__name__)

#: Evaluates global weights on the server's test set: (loss, accuracy).
Evaluator = Callable[[ArrayRecord], tuple[float, float]]


@dataclass(frozen=True)
class RoundPlan:
    """What every round of a run shares: the settings sent to clients, sampling, the gate, the crypto."""

    settings: Mapping[str, bool | int | float | str]
    """The run's settings, sent with every message (the client adds nothing of the server's to its own)."""
    fraction_train: float
    fraction_evaluate: float
    seed: int
    """Seeds the choice of nodes each round (ordinary randomness: reproducible by design)."""
    timeout: float
    admission: Admission
    evaluate: Evaluator
    max_abs_delta: float
    """Largest |update - global| per parameter a plaintext update may carry."""
    threshold: ThresholdCommittee | None = None
    """HE (threshold CKKS): the run's key holders, who decrypt only verified sums; None: plaintext aggregation."""
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class RoundResult:
    round: int
    parent: ArrayRecord
    model: ArrayRecord | None
    """The new global model; None when the round produced none (``failure`` says why)."""
    admitted: tuple[Admitted, ...]
    """The updates in the aggregate, each with its signed leaf."""
    declines: tuple[Declined, ...]
    rejections: tuple[Rejection, ...]
    """Every reply set aside in this round, train, decrypt and evaluate, each with its reason code."""
    evaluations: tuple[Evaluation, ...]
    failure: str
    stop: str
    """Non-empty when the run should end here (every client asked has exhausted its privacy budget)."""
    metrics: RoundMetrics | None
    """The round's row for metrics.jsonl (None when ``stop`` is set: nothing happened to record)."""
    endorsement: Endorsement | None = None
    """Threshold HE: the key holders' co-signatures of ``model``."""

    @property
    def current(self) -> ArrayRecord:
        """The global model after this round: the new one, or the parent unchanged."""
        return self.model if self.model is not None else self.parent

    @property
    def privacy_spent(self) -> dict[str, float]:
        """Epsilon each admitted update signed this round (none without DP); declines' claims are not counted."""
        return {a.update.client_id: a.update.epsilon for a in self.admitted if a.update.epsilon is not None}

    @property
    def leaves(self) -> tuple[SignedUpdate, ...]:
        """The admitted updates' signed leaves, as the lineage records them."""
        return tuple(a.leaf for a in self.admitted)

    def rejected(self, phase: str) -> list[Rejection]:
        return [r for r in self.rejections if r.phase == phase]


def run_round(grid: Grid, plan: RoundPlan, server_round: int, parent: ArrayRecord) -> RoundResult:
    started = plan.clock()
    scheme = plan.threshold.key.params if plan.threshold else None
    spec = ModelSpec.of(parent, plan.max_abs_delta, scheme)
    nodes = sorted(grid.get_node_ids())
    asked = sample(nodes, plan.fraction_train, random.Random(f"train/{plan.seed}/{server_round}"))
    replies, rejections = exchange(grid, _messages(asked, TRAIN, parent, plan.settings, server_round),
                                   plan.timeout, TRAIN)
    steps = {TRAIN: plan.clock() - started}
    updates: list[Update] = []
    declines: list[Declined] = []
    for reply in replies:
        outcome = decode_train_reply(reply, spec)
        if isinstance(outcome, Update):
            updates.append(outcome)
        elif isinstance(outcome, Declined):
            declines.append(outcome)
        else:
            rejections.append(outcome)
    if asked and len(declines) == len(asked):
        refused = sorted({d.reason for d in declines if d.status != BUDGET_EXHAUSTED})
        stop = (f"all {len(asked)} clients asked in round {server_round} have exhausted their privacy budget"
                if not refused else f"all {len(asked)} clients asked in round {server_round} declined; their "
                                    f"privacy policies refuse: {'; '.join(refused)}")
        return RoundResult(server_round, parent, None, (), tuple(declines), tuple(rejections), (), "", stop, None)

    admitted: list[Admitted] = []
    parent_hash = hash_model(parent, str(plan.settings.get("run-id", "")))  # what every update must have trained from
    for outcome in (plan.admission.admit(server_round, u, parent_hash) for u in updates):
        (admitted if isinstance(outcome, Admitted) else rejections).append(outcome)

    committed: tuple[SignedEnvelope, ...] = ()
    if plan.threshold is not None:  # commit, then reveal: the sum's leaves are fixed before any ciphertext is seen
        key = plan.threshold
        reveals = reveal_updates(grid, server_round, plan.settings, admitted, spec, key.allow, key.domain,
                                 plan.timeout)
        admitted, committed = list(reveals.revealed), reveals.committed
        rejections.extend(reveals.rejections)
        steps["reveal"] = plan.clock() - started - sum(steps.values())

    aggregate = aggregate_updates(grid, plan, server_round, parent, spec, admitted, parent_hash, committed)
    steps["aggregate"] = plan.clock() - started - sum(steps.values())
    rejections.extend(aggregate.rejections)
    current = aggregate.model if aggregate.model is not None else parent

    refused = {r.node_id for r in rejections if r.phase == TRAIN}
    evaluators = sample([n for n in nodes if n not in refused], plan.fraction_evaluate,
                        random.Random(f"evaluate/{plan.seed}/{server_round}"))
    evaluations: list[Evaluation] = []
    if evaluators:
        # clients evaluate only a model they were sent for training (a crafted one could probe their data): the
        # round's parent, so `val_*` measure the model each round started from
        replies, set_aside = exchange(grid, _messages(evaluators, EVALUATE, parent, plan.settings, server_round),
                                      plan.timeout, EVALUATE)
        for outcome in (decode_evaluate_reply(m) for m in replies):
            (evaluations if isinstance(outcome, Evaluation) else set_aside).append(outcome)
        rejections.extend(set_aside)
    steps[EVALUATE] = plan.clock() - started - sum(steps.values())
    for r in rejections:
        log.warning("round %s: %s reply set aside: %s", server_round, r.phase, r)

    loss, accuracy = plan.evaluate(current)
    steps["central"] = plan.clock() - started - sum(steps.values())
    result = RoundResult(server_round, parent, aggregate.model, aggregate.used, tuple(declines), tuple(rejections),
                         tuple(evaluations), aggregate.failure, "", None, aggregate.endorsement)
    metrics = round_metrics(result, loss, accuracy, plan.clock() - started, spec.num_values)
    return replace(result, metrics=replace(metrics, step_seconds=steps))


@dataclass(frozen=True)
class Aggregate:
    """What aggregation made of the admitted updates: a new model (or None and why), the updates in it, and
    those it set aside on the way (a ciphertext SEAL refused, a key holder replaced)."""

    model: ArrayRecord | None
    used: tuple[Admitted, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    failure: str = ""
    endorsement: Endorsement | None = None


def aggregate_updates(grid: Grid, plan: RoundPlan, server_round: int, parent: ArrayRecord, spec: ModelSpec,
                      admitted: list[Admitted], parent_hash: bytes, committed: tuple[SignedEnvelope, ...] = ()
                      ) -> Aggregate:
    nothing = f"round {server_round}: no update could be aggregated; the model is unchanged"
    if not admitted:
        return Aggregate(None, failure=nothing)
    if plan.threshold is not None:
        return _threshold_aggregate(grid, plan, server_round, parent, spec, admitted, parent_hash, committed)
    examples = sum(a.update.num_examples for a in admitted)
    return Aggregate(apply_mean(parent, plain_sum(admitted), examples), tuple(admitted))


def _threshold_aggregate(grid: Grid, plan: RoundPlan, server_round: int, parent: ArrayRecord, spec: ModelSpec,
                         admitted: list[Admitted], parent_hash: bytes, committed: tuple[SignedEnvelope, ...]
                         ) -> Aggregate:
    """Sum the ciphertexts, have t key holders decrypt the verified sum, and scale it back: clients encrypted
    ``(n_k / W) * delta_k`` with W the key statement's weight scale, so the mean is ``sum * W / sum(n_k)``. Then t key
    holders recompute that model and co-sign its hash."""
    assert plan.threshold is not None
    total = threshold_sum(plan.threshold.key.params, admitted)
    if total.values is None:
        return Aggregate(None, rejections=total.rejections,
                         failure=f"round {server_round}: no update could be aggregated; the model is unchanged")
    scale = plan.threshold.key.statement.weight_scale  # what every key holder signed in the key statement
    examples = sum(a.update.num_examples for a in total.used)
    if examples > scale:
        return Aggregate(None, rejections=total.rejections, failure=(
            f"round {server_round}: {examples} examples exceed the key's weight scale {scale}; the sum could overflow"))
    outcome = plan.threshold.decrypt(grid, server_round, plan.settings, list(total.used), total.values,
                                     spec.num_values, committed)
    rejections = total.rejections + outcome.rejections
    if outcome.values is None:
        return Aggregate(None, rejections=rejections, failure=outcome.failure)
    model = apply_mean(parent, outcome.values * scale, examples)
    model_hash = hash_model(model, str(plan.settings.get("run-id", "")))
    cosigned = plan.threshold.cosign(grid, server_round, plan.settings, outcome, parent, parent_hash, model_hash)
    rejections += cosigned.rejections
    if cosigned.endorsement is None:
        return Aggregate(None, rejections=rejections, failure=cosigned.failure)
    return Aggregate(model, total.used, rejections, endorsement=cosigned.endorsement)


def sample(nodes: list[int], fraction: float, rng: random.Random) -> list[int]:
    """``fraction`` of ``nodes`` (at least one, none if fraction is 0), sorted."""
    if fraction <= 0 or not nodes:
        return []
    return sorted(rng.sample(nodes, max(1, min(len(nodes), int(len(nodes) * fraction)))))


def _messages(nodes: Iterable[int], kind: str, arrays: ArrayRecord, settings: Mapping, server_round: int
              ) -> list[Message]:
    content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: round_settings(settings, server_round)})
    return [Message(content, dst_node_id=node, message_type=kind, group_id=str(server_round)) for node in nodes]


def round_metrics(result: RoundResult, loss: float, accuracy: float, seconds: float, num_values: int
                  ) -> RoundMetrics:
    """The round's row: central evaluation, the admitted updates' means, privacy spent, what was set aside."""
    updates = [a.update for a in result.admitted]
    epsilons = list(result.privacy_spent.values())  # signed values only
    train = result.rejected(TRAIN)
    return RoundMetrics(
        round=result.round,
        accuracy=accuracy,
        loss=loss,
        seconds=seconds,
        train_loss=_weighted(updates, lambda u: u.train_loss),
        val_accuracy=_weighted(result.evaluations, lambda e: e.accuracy),
        val_loss=_weighted(result.evaluations, lambda e: e.loss),
        train_clients=len(updates),
        evaluate_clients=len(result.evaluations),
        epsilon_max=max(epsilons) if epsilons else None,
        epsilon_mean=float(np.mean(epsilons)) if epsilons else None,
        budget_exhausted=sum(d.status == BUDGET_EXHAUSTED for d in result.declines),
        policy_refused=sum(d.status != BUDGET_EXHAUSTED for d in result.declines),
        rejected_updates=len(train),
        upload_bytes_per_param=float(np.mean([u.upload_bytes / num_values for u in updates])) if updates else None,
        client_train_seconds=_weighted(updates, lambda u: u.train_seconds),
        client_secure_seconds=_weighted(updates, lambda u: u.secure_seconds),
        failed=result.failure,
        rejected_reasons=dict(Counter(r.reason.value for r in train)),
        evaluate_rejected=dict(Counter(r.reason.value for r in result.rejected(EVALUATE))),
    )


def _weighted(items, value: Callable) -> float | None:
    """Example-weighted mean of ``value(item)`` over the items that report it."""
    pairs = [(v, i.num_examples) for i in items if (v := value(i)) is not None]
    if not pairs:
        return None
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)
