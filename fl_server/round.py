"""One federated round, top to bottom, as plain values. :func:`run_round` reads as its phases:

    sample                  nodes, seeded by run and round                             pure
    exchange check-in       user-level DP: devices the server has no round for draw their
                            coins; only those due this round are sent the model        fl_server.round.check_in
    exchange train          the global model and the round's settings                  ask (fl_server.exchange)
    decode                  each reply: Update | Declined | Rejection                  fedproof.core.replies
    (all declined?)         the run is over: RoundResult.stop
    admit                   signature, allow-list, replay, parent                      fl_server.admission
    exchange reveal (HE)    the admitted commitments are frozen; each contributor
                            reveals its ciphertexts to that set                        fl_server.reveal
    sum                     sum(n_k delta_k), or the ciphertexts' sum                  pure (fl_server.aggregation)
    exchange decrypt (HE)   t key holders check and partially decrypt the sum;
                            the server fuses the shares                                fl_server.decryptors
    apply                   parent + server-lr * sum / sum(n_k)                        pure
    exchange co-sign (HE)   t key holders recompute the model and co-sign it           fl_server.decryptors
    exchange evaluate       the parent (the model they were sent) to clients whose policy allows it
    central evaluation      of the resulting model
    -> RoundResult          frozen: what the lineage, metrics.jsonl, Prometheus and the progress bar consume

Flower provides the transport (``Grid``) and the records; everything else is here. No reply can raise out of
this function: every one becomes a value, a rejection with a reason code at worst.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedproof.core.protocol import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    CHECK_IN,
    NOT_SAMPLED,
    EVALUATE,
    PUBLIC_KEY_KEY,
    TRAIN,
    SignedEnvelope,
)
from fedproof.core.replies import (
    Declined,
    Evaluation,
    ModelSpec,
    Rejection,
    Update,
    decode_check_in_reply,
    decode_evaluate_reply,
    decode_train_reply,
)
from fedproof.core.rundir import RoundMetrics
from fl_server.admission import Admission, Admitted
from fedproof.core.weights import apply_mean, hash_model, num_values
from fl_server.aggregation import plain_sum, threshold_sum
from fl_server.decryptors import Decrypted, Endorsement, ThresholdCommittee
from fl_server.exchange import ask
from fl_server.reveal import reveal_updates
from ledger.bundle import SignedUpdate

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    server_lr: float = 1.0
    """The server's step along the mean update (DP-FedAvg's server learning rate; co-signers apply the same)."""
    check_in: bool = False
    """User-level DP: send the model only to devices due this round; ask those the server has no round for first
    whether they take part (a small message). Every reply names the device's next round."""
    count_slots: int = 0
    """User-level DP with adaptive clipping: each encrypted update ends with its device's unclipped bit."""
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
    next_rounds: Mapping[int, int] = field(default_factory=dict)
    """User-level DP: node -> the round its device said it takes part in next (0: none in this run), from this
    round's replies; the run's loop keeps them (``run_round``'s ``schedule``)."""
    unclipped_share: float | None = None
    """Adaptive clipping: the noised share of this round's updates that needed no clipping (None: no count)."""

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


def run_round(grid: Grid, plan: RoundPlan, server_round: int, parent: ArrayRecord,
              schedule: Mapping[int, int] | None = None) -> RoundResult:
    """The round's phases, top to bottom. Each exchange goes through :func:`fl_server.exchange.ask`; the rest are
    pure steps over values, and a phase that fails hands its reason on as a value (``Fold.failure``).
    ``schedule``: user-level DP, the round each node's device said it takes part in next (earlier rounds' results)."""
    laps = _Laps(plan.clock)
    spec = ModelSpec.of(parent, plan.max_abs_delta, plan.threshold.key.params if plan.threshold else None,
                        plan.count_slots)
    parent_hash = hash_model(parent, str(plan.settings.get("run-id", "")))  # what every update must have trained from
    nodes = sorted(grid.get_node_ids())
    asked = sample(nodes, plan.fraction_train, random.Random(f"train/{plan.seed}/{server_round}"))
    rejections: list[Rejection] = []
    trainers, declines = asked, []
    if plan.check_in:  # devices due this round train; those the server knows nothing of check in first
        trainers, unknown = split_by_schedule(asked, schedule or {}, server_round)
        checked, declines = check_in(grid, plan, server_round, unknown, rejections)
        trainers, asked = sorted(trainers + checked), sorted(trainers + unknown)
    laps.lap("check-in")
    replies, set_aside = ask(grid, trainers, TRAIN, train_content(plan, parent), plan.settings, server_round,
                             plan.timeout)
    rejections.extend(set_aside)
    laps.lap(TRAIN)
    updates, trained_declines = decode_train_replies(replies, spec, rejections)
    declines += trained_declines
    next_rounds = {o.node_id: o.next_round for o in (*updates, *declines)} if plan.check_in else {}
    if asked and len(declines) == len(asked) and not any(d.status == NOT_SAMPLED for d in declines):
        return RoundResult(server_round, parent, None, (), tuple(declines), tuple(rejections), (), "",
                           everyone_declined(declines, len(asked), server_round), None, next_rounds=next_rounds)
    admitted = admit(plan.admission, server_round, updates, parent_hash, rejections)
    committed: tuple[SignedEnvelope, ...] = ()
    if plan.threshold is not None:  # commit, then reveal: the sum's leaves are fixed before any ciphertext is seen
        committee = plan.threshold
        reveals = reveal_updates(grid, server_round, plan.settings, admitted, spec, committee.allow,
                                 committee.domain, plan.timeout)
        admitted, committed = list(reveals.revealed), reveals.committed
        rejections.extend(reveals.rejections)
        laps.lap("reveal")
    fold = sum_updates(plan, server_round, admitted)                                         # pure
    laps.lap("sum")
    fold = decrypt_sum(grid, plan, server_round, fold, spec, committed)                      # exchange (HE)
    laps.lap("decrypt")
    fold = apply_sum(fold, parent, plan.server_lr)                                           # pure
    fold = cosign_model(grid, plan, server_round, fold, parent, parent_hash)                 # exchange (HE)
    rejections.extend(fold.rejections)
    laps.lap("co-sign")
    refused = {r.node_id for r in rejections if r.phase == TRAIN}
    evaluations = evaluate_parent(grid, plan, server_round, parent, [n for n in nodes if n not in refused],
                                  rejections)
    laps.lap(EVALUATE)
    for r in rejections:
        log.warning("round %s: %s reply set aside: %s", server_round, r.phase, r)
    loss, accuracy = plan.evaluate(fold.model if fold.model is not None else parent)
    laps.lap("central")
    result = RoundResult(server_round, parent, fold.model, fold.used, tuple(declines), tuple(rejections),
                         tuple(evaluations), fold.failure, "", None, fold.endorsement, next_rounds,
                         unclipped_share(fold, spec))
    metrics = round_metrics(result, loss, accuracy, laps.total(), spec.num_values)
    clip = plan.settings.get("update-clip") if plan.check_in else None
    return replace(result, metrics=replace(metrics, step_seconds=laps.steps, unclipped_share=result.unclipped_share,
                                           update_clip=float(clip) if clip is not None else None))


# ----------------------------------------------------------------------------------------------- the phases


class _Laps:
    """Seconds per phase of one round (``metrics.jsonl``'s ``step_seconds``)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock, self.started, self.steps = clock, clock(), {}

    def lap(self, name: str) -> None:
        self.steps[name] = self.clock() - self.started - sum(self.steps.values())

    def total(self) -> float:
        return self.clock() - self.started


def train_content(plan: RoundPlan, parent: ArrayRecord) -> RecordDict:
    """The global model, and under HE the joint key's p0 for devices outside the committee (each checks it)."""
    content = RecordDict({ARRAYS_KEY: parent})
    if plan.threshold is not None:
        content[PUBLIC_KEY_KEY] = ArrayRecord({"p0": Array(plan.threshold.key.public_key.to_arrays()[0])})
    return content


def split_by_schedule(nodes: list[int], schedule: Mapping[int, int], server_round: int
                      ) -> tuple[list[int], list[int]]:
    """User-level DP: the nodes whose devices said they take part in this round, and those the server knows nothing
    of (not asked yet in this run, or their round passed without them). The rest said a later round, or none, and
    are not asked: their coins for this round said no (a device asked anyway answers the same)."""
    due = [n for n in nodes if schedule.get(n) == server_round]
    unknown = [n for n in nodes if n not in schedule or 0 < schedule[n] < server_round]
    return due, unknown


def check_in(grid: Grid, plan: RoundPlan, server_round: int, asked: list[int], rejections: list[Rejection]
             ) -> tuple[list[int], list[Declined]]:
    """The nodes whose devices take part this round, and the others' declines (not sampled, budget, policy)."""
    if not asked:
        return [], []
    replies, missing = ask(grid, asked, CHECK_IN, RecordDict(), plan.settings, server_round, plan.timeout,
                           phase=TRAIN)
    rejections.extend(missing)
    taking_part, declines = sort_outcomes((decode_check_in_reply(reply) for reply in replies), rejections)
    return sorted(taking_part), declines


def decode_train_replies(replies: list[Message], spec: ModelSpec, rejections: list[Rejection]
                         ) -> tuple[list[Update], list[Declined]]:
    """Each train reply as a value: an update, a decline (budget or policy), or a rejection added to ``rejections``."""
    return sort_outcomes((decode_train_reply(reply, spec) for reply in replies), rejections)


def sort_outcomes(outcomes: Iterable[T | Declined | Rejection], rejections: list[Rejection]
                  ) -> tuple[list[T], list[Declined]]:
    """Decoded replies split by kind: the values, the declines; the rejections go to ``rejections``."""
    values: list[T] = []
    declines: list[Declined] = []
    for outcome in outcomes:
        if isinstance(outcome, Declined):
            declines.append(outcome)
        elif isinstance(outcome, Rejection):
            rejections.append(outcome)
        else:
            values.append(outcome)
    return values, declines


def everyone_declined(declines: list[Declined], asked: int, server_round: int) -> str:
    """Why the run ends when every client asked declined."""
    refused = sorted({d.reason for d in declines if d.status != BUDGET_EXHAUSTED})
    if not refused:
        return f"all {asked} clients asked in round {server_round} have exhausted their privacy budget"
    return f"all {asked} clients asked in round {server_round} declined; their privacy policies refuse: " + \
        "; ".join(refused)


def admit(admission: Admission, server_round: int, updates: list[Update], parent_hash: bytes,
          rejections: list[Rejection]) -> list[Admitted]:
    """The updates that pass the signature gate; the others are added to ``rejections``."""
    admitted: list[Admitted] = []
    for outcome in (admission.admit(server_round, u, parent_hash) for u in updates):
        (admitted if isinstance(outcome, Admitted) else rejections).append(outcome)
    return admitted


@dataclass(frozen=True)
class Fold:
    """The aggregate as it goes through the phases: the sum (ciphertexts under HE, then plain), the updates in it,
    the new model, its co-signatures; or, from the first phase that failed, the reason, passed on unchanged."""

    used: tuple[Admitted, ...] = ()
    examples: int = 0
    total: np.ndarray | None = None
    decrypted: Decrypted | None = None
    model: ArrayRecord | None = None
    endorsement: Endorsement | None = None
    rejections: tuple[Rejection, ...] = ()
    failure: str = ""


def sum_updates(plan: RoundPlan, server_round: int, admitted: list[Admitted]) -> Fold:
    """``sum(n_k delta_k)`` in the clear, or the sum of the ciphertexts under the joint key (pure)."""
    if not admitted:
        return Fold(failure=f"round {server_round}: no update could be aggregated; the model is unchanged")
    if plan.threshold is None:
        return Fold(tuple(admitted), sum(a.update.num_examples for a in admitted), plain_sum(admitted))
    total = threshold_sum(plan.threshold.key.params, admitted)
    if total.values is None:
        return Fold(rejections=total.rejections,
                    failure=f"round {server_round}: no update could be aggregated; the model is unchanged")
    examples, scale = sum(a.update.num_examples for a in total.used), plan.threshold.key.statement.weight_scale
    if examples > scale:  # clients encrypted (n_k / W) delta_k, W from the key statement every holder signed
        return Fold(rejections=total.rejections, failure=(
            f"round {server_round}: {examples} examples exceed the key's weight scale {scale}; the sum could overflow"))
    return Fold(total.used, examples, total.values, rejections=total.rejections)


def decrypt_sum(grid: Grid, plan: RoundPlan, server_round: int, fold: Fold, spec: ModelSpec,
                committed: tuple[SignedEnvelope, ...]) -> Fold:
    """HE: t key holders check and partially decrypt the verified sum, and the server fuses their shares (another t
    are asked when some fail); the plain sum is ``sum * W``. Without HE the sum is already plain."""
    if fold.failure or plan.threshold is None:
        return fold
    out = plan.threshold.decrypt(grid, server_round, plan.settings, list(fold.used), fold.total, spec.encrypted_values,
                                 committed)
    rejections = fold.rejections + out.rejections
    if out.values is None:
        return replace(fold, rejections=rejections, failure=out.failure)
    return replace(fold, total=out.values * plan.threshold.key.statement.weight_scale, decrypted=out,
                   rejections=rejections)


def apply_sum(fold: Fold, parent: ArrayRecord, server_lr: float = 1.0) -> Fold:
    """The new model, ``parent + server_lr * sum / sum(n_k)`` (pure; the co-signers compute the same), from the sum's
    model values (any values after them are adaptive clipping's count, :func:`unclipped_share`)."""
    if fold.failure:
        return fold
    assert fold.total is not None
    return replace(fold, model=apply_mean(parent, fold.total[: num_values(parent)], fold.examples, server_lr))


def unclipped_share(fold: Fold, spec: ModelSpec) -> float | None:
    """Adaptive clipping: the decrypted count of updates that needed no clipping (its noise included), over the
    round's contributors (pure); None when the run has no count or the round no sum."""
    if fold.failure or not spec.extra or fold.total is None or fold.decrypted is None:
        return None
    return float(fold.total[spec.num_values]) / len(fold.used)


def cosign_model(grid: Grid, plan: RoundPlan, server_round: int, fold: Fold, parent: ArrayRecord,
                 parent_hash: bytes) -> Fold:
    """HE: t key holders recompute the new model from what they decrypted and co-sign its hash; without t
    signatures the round is void."""
    if fold.failure or plan.threshold is None:
        return fold
    assert fold.model is not None and fold.decrypted is not None
    model_hash = hash_model(fold.model, str(plan.settings.get("run-id", "")))
    cosigned = plan.threshold.cosign(grid, server_round, plan.settings, fold.decrypted, parent, parent_hash,
                                     model_hash)
    rejections = fold.rejections + cosigned.rejections
    if cosigned.endorsement is None:
        return replace(fold, model=None, rejections=rejections, failure=cosigned.failure)
    return replace(fold, endorsement=cosigned.endorsement, rejections=rejections)


def evaluate_parent(grid: Grid, plan: RoundPlan, server_round: int, parent: ArrayRecord, candidates: list[int],
                    rejections: list[Rejection]) -> list[Evaluation]:
    """Clients evaluate only a model they were sent for training (a crafted one could probe their data): the round's
    parent, so ``val_*`` measure the model each round started from."""
    evaluators = sample(candidates, plan.fraction_evaluate, random.Random(f"evaluate/{plan.seed}/{server_round}"))
    if not evaluators:
        return []
    replies, set_aside = ask(grid, evaluators, EVALUATE, RecordDict({ARRAYS_KEY: parent}), plan.settings,
                             server_round, plan.timeout)
    evaluations: list[Evaluation] = []
    for outcome in (decode_evaluate_reply(m) for m in replies):
        (evaluations if isinstance(outcome, Evaluation) else set_aside).append(outcome)
    rejections.extend(set_aside)
    return evaluations


def sample(nodes: list[int], fraction: float, rng: random.Random) -> list[int]:
    """``fraction`` of ``nodes`` (at least one, none if fraction is 0), sorted."""
    if fraction <= 0 or not nodes:
        return []
    return sorted(rng.sample(nodes, max(1, min(len(nodes), int(len(nodes) * fraction)))))


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
        policy_refused=sum(d.status not in (BUDGET_EXHAUSTED, NOT_SAMPLED) for d in result.declines),
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
