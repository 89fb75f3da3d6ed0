"""run_round with a fake grid, one test per outcome: what each reply becomes, and that none can fail the round.

(The encrypted path, with its key holders' failures, is in test_threshold_round.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fakegrid import FakeGrid
from fedproof.core.config import RunConfig
from fedproof.core.keys import init_key_set
from fedproof.core.protocol import BUDGET_EXHAUSTED, ClientReport
from fedproof.core.weights import flatten
from fl_server.admission import Admission
from fl_server.round import RoundPlan, RoundResult, run_round
from ledger.verification import AllowList, UpdateVerifier
from rounds import signed_reply

pytestmark = pytest.mark.usefixtures("virtual_exchange_clock")  # a silent node's timeout passes at once

CLIENTS = ["1", "2", "3", "4"]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    keys = init_key_set(tmp_path_factory.mktemp("keys"), CLIENTS)
    return RunConfig(run_id="r", chain_id=31337, ledger_contract="0x" + "ab" * 20, key_set=str(keys.directory),
                     he=False)


def parent() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((4, 5), np.float32)), "b": Array(np.zeros(3, np.float32))})


def weights(value: float, **changes) -> ArrayRecord:
    arrays = {"w": Array(np.full((4, 5), value, np.float32)), "b": Array(np.full(3, value, np.float32))}
    arrays.update({k: Array(v) for k, v in changes.items()})
    return ArrayRecord(arrays)


def evaluation(loss: float = 0.5, accuracy: float = 0.75, count: int = 10) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({"val_loss": loss, "val_accuracy": accuracy, "num-examples": count})})


def run(config: RunConfig, train: dict, evaluate=None, fraction_evaluate: float = 1.0) -> tuple[RoundResult, FakeGrid]:
    """One plaintext round over nodes 1..4; node n answers ``train[n]`` (missing: no reply)."""
    plan = RoundPlan(
        settings=config.client_record(), fraction_train=1.0, fraction_evaluate=fraction_evaluate, seed=3, timeout=5,
        admission=Admission(UpdateVerifier(AllowList.load(config.key_set + "/allowlist.json"), config.domain())),
        evaluate=lambda arrays: (float(np.abs(flatten(arrays)).sum()), 0.5), max_abs_delta=4.0,
    )
    grid = FakeGrid([1, 2, 3, 4], train=lambda node, msg: train.get(node),
                    evaluate=evaluate or (lambda node, msg: evaluation()))
    return run_round(grid, plan, 1, parent()), grid


def test_all_admitted(config: RunConfig) -> None:
    result, grid = run(config, {n: signed_reply(config, parent(), str(n), weights(n * 0.5), 10 * n, train_loss=1.0 * n)
                                for n in (1, 2, 3, 4)})
    expected = sum(10 * n * n * 0.5 for n in (1, 2, 3, 4)) / sum(10 * n for n in (1, 2, 3, 4))
    assert result.model is not None and np.allclose(flatten(result.model), expected)
    assert not result.rejections and not result.failure and not result.stop
    assert sorted(leaf.fields.client_id for leaf in result.leaves) == CLIENTS
    row = result.metrics
    assert row.train_clients == 4 and row.evaluate_clients == 4 and row.val_accuracy == pytest.approx(0.75)
    assert row.train_loss == pytest.approx(expected * 2)  # example-weighted, like the model
    assert row.loss == pytest.approx(23 * expected, rel=1e-5)  # the central evaluation ran on the new model
    assert grid.asked["evaluate"] == [1, 2, 3, 4]


STOCK = {  # what a stock Flower quickstart ClientApp sends (no fedproof import), and its variants
    "stock": (RecordDict({"arrays": weights(1.0), "metrics": MetricRecord({"train_loss": 0.1, "num-examples": 5})}),
              "unsigned"),
    "nan": (RecordDict({"arrays": weights(np.nan), "metrics": MetricRecord({"num-examples": 5})}), "non-finite"),
    "wrong-shape": (RecordDict({"arrays": weights(1.0, w=np.zeros((5, 4), np.float32)),
                                "metrics": MetricRecord({"num-examples": 5})}), "wrong-shape"),
    "extra-array": (RecordDict({"arrays": weights(1.0, extra=np.zeros(2, np.float32)),
                                "metrics": MetricRecord({"num-examples": 5})}), "wrong-shape"),
    "no-count": (RecordDict({"arrays": weights(1.0), "metrics": MetricRecord({"train_loss": 0.1})}),
                 "bad-example-count"),
}


@pytest.mark.parametrize("variant", sorted(STOCK))
def test_a_stock_flower_client_is_refused_alone_and_not_asked_to_evaluate(config: RunConfig, variant: str) -> None:
    content, code = STOCK[variant]
    result, grid = run(config, {1: signed_reply(config, parent(), "1", weights(1.0), 10),
                                2: signed_reply(config, parent(), "2", weights(3.0), 10), 3: content,
                                4: signed_reply(config, parent(), "4", weights(2.0), 20)})
    assert [(r.node_id, r.phase, r.reason.value) for r in result.rejections] == [(3, "train", code)]
    assert np.allclose(flatten(result.model), 2.0) and np.all(np.isfinite(flatten(result.model)))
    assert grid.asked["evaluate"] == [1, 2, 4]
    assert result.metrics.rejected_updates == 1 and result.metrics.rejected_reasons == {code: 1}


@pytest.mark.parametrize("bad, code", [
    (weights(np.nan), "non-finite"),
    (weights(np.inf), "non-finite"),
    (weights(1.0, w=np.zeros((2, 10), np.float32)), "wrong-shape"),
    (weights(1.0, w=np.zeros((4, 5), np.float64)), "wrong-dtype"),
    (weights(1.0, extra=np.zeros(1, np.float32)), "wrong-shape"),
    (ArrayRecord({"w": Array(np.zeros((4, 5), np.float32))}), "wrong-shape"),
    (weights(4.5), "over-norm"),
    ("no-arrays", "wrong-mode"),
])
def test_a_signed_but_malformed_plaintext_update_is_rejected_alone(config: RunConfig, bad, code: str) -> None:
    """Under --no-he an allow-listed client signs what it sends: its signature is valid, its update is not."""
    if isinstance(bad, str):  # signed, then the update taken out
        bad = signed_reply(config, parent(), "2", weights(1.0), 10)
        del bad["arrays"]
    else:
        bad = signed_reply(config, parent(), "2", bad, 10)
    result, _ = run(config, {1: signed_reply(config, parent(), "1", weights(1.0), 10), 2: bad,
                             3: signed_reply(config, parent(), "3", weights(3.0), 10), 4: signed_reply(config, parent(), "4", weights(2.0), 20)})
    assert [(r.client_id, r.reason.value) for r in result.rejections] == [("2", code)]
    assert np.allclose(flatten(result.model), 2.0)


def test_all_declined_ends_the_run_with_its_reason(config: RunConfig) -> None:
    declined = RecordDict({"client": ClientReport("x", BUDGET_EXHAUSTED, 3.0, "spent").to_record(),
                           "metrics": MetricRecord({"num-examples": 1})})
    result, grid = run(config, {n: declined for n in (1, 2, 3, 4)})
    assert result.stop.startswith("all 4 clients asked in round 1 have exhausted")
    assert result.model is None and result.metrics is None and "evaluate" not in grid.asked


def test_some_declined_are_counted_not_failed(config: RunConfig) -> None:
    declined = RecordDict({"client": ClientReport("4", BUDGET_EXHAUSTED, 3.0, "spent").to_record()})
    result, _ = run(config, {1: signed_reply(config, parent(), "1", weights(1.0), 10), 4: declined})
    assert not result.stop and result.metrics.budget_exhausted == 1
    assert result.metrics.epsilon_max is None  # a decline's epsilon is unsigned: never reported as spent
    assert sorted(r.reason.value for r in result.rejections) == ["no-reply", "no-reply"]


def test_nobody_answers_leaves_the_model_unchanged_and_the_round_recorded(config: RunConfig) -> None:
    result, grid = run(config, {})
    assert result.model is None and result.current is result.parent
    assert "no update could be aggregated" in result.failure and result.metrics.failed == result.failure
    assert result.metrics.rejected_reasons == {"no-reply": 4}
    assert "evaluate" not in grid.asked  # nobody who failed to answer is asked again this round


def test_evaluate_replies_pass_the_same_gate(config: RunConfig) -> None:
    answers = {
        1: evaluation(),
        2: RecordDict({"metrics": MetricRecord({"eval_loss": 0.3, "eval_acc": 0.9, "num-examples": 64})}),  # stock
        3: evaluation(accuracy=float("nan")),
        4: Error(code=0, reason="ClientApp raised"),
    }
    result, _ = run(config, {n: signed_reply(config, parent(), str(n), weights(1.0), 10) for n in (1, 2, 3, 4)},
                    evaluate=lambda node, msg: answers[node])
    assert result.model is not None and not result.failure
    assert [(r.node_id, r.phase, r.reason.value) for r in result.rejections] == [
        (2, "evaluate", "malformed"), (3, "evaluate", "non-finite"), (4, "evaluate", "client-error")]
    assert result.metrics.evaluate_clients == 1 and result.metrics.val_accuracy == pytest.approx(0.75)
    assert result.metrics.evaluate_rejected == {"malformed": 1, "non-finite": 1, "client-error": 1}
    assert result.metrics.rejected_updates == 0


def test_a_reply_nobody_asked_for_is_set_aside(config: RunConfig) -> None:
    class Chatty(FakeGrid):
        def pull_messages(self, message_ids):
            replies = list(super().pull_messages(message_ids))
            return replies + [Message(replies[0].content, reply_to=Message(RecordDict(), dst_node_id=9,
                                                                             message_type="train"))]

    plan_grid = Chatty([1, 2], train=lambda node, msg: signed_reply(config, parent(), str(node), weights(1.0), 10),
                       evaluate=lambda node, msg: evaluation())
    plan = RoundPlan(settings={"run-id": config.run_id}, fraction_train=1.0, fraction_evaluate=1.0, seed=1, timeout=1,
                     admission=Admission(UpdateVerifier(AllowList.load(config.key_set + "/allowlist.json"),
                                                        config.domain())),
                     evaluate=lambda arrays: (0.0, 0.0), max_abs_delta=4.0)
    result = run_round(plan_grid, plan, 1, parent())
    assert [(r.node_id, r.phase, r.reason.value) for r in result.rejections] == [
        (9, "train", "unexpected-sender"), (9, "evaluate", "unexpected-sender")]
    assert len(result.leaves) == 2


def test_sampling_is_seeded_by_run_and_round(config: RunConfig) -> None:
    from fl_server.round import sample
    import random

    nodes = list(range(100))
    a = sample(nodes, 0.1, random.Random("train/1/2"))
    assert a == sample(nodes, 0.1, random.Random("train/1/2")) and len(a) == 10
    assert a != sample(nodes, 0.1, random.Random("train/1/3"))
    assert sample(nodes, 0.0, random.Random(0)) == [] and sample([1], 0.01, random.Random(0)) == [1]


def test_the_signed_epsilon_is_the_one_reported(config: RunConfig) -> None:
    result, _ = run(config, {1: signed_reply(config, parent(), "1", weights(1.0), 10, epsilon=2.5, claimed_epsilon=0.1),
                             2: signed_reply(config, parent(), "2", weights(1.0), 10, epsilon=1.25)})
    assert result.privacy_spent == {"1": 2.5, "2": 1.25}
    assert result.metrics.epsilon_max == 2.5 and result.metrics.epsilon_mean == pytest.approx(1.875)


def test_a_client_that_withholds_its_metrics_is_set_aside_as_withheld(config: RunConfig) -> None:
    from fedproof.core.protocol import WITHHELD

    withheld = RecordDict({"client": ClientReport("2", WITHHELD, reason="DP").to_record()})
    result, _ = run(config, {n: signed_reply(config, parent(), str(n), weights(1.0), 10) for n in (1, 2)},
                    evaluate=lambda node, msg: withheld if node == 2 else evaluation())
    assert [(r.node_id, r.reason.value) for r in result.rejected("evaluate")] == [(2, "withheld")]
    assert result.metrics.evaluate_clients == 1 and result.model is not None


def test_a_dp_client_withholds_evaluate_metrics(config: RunConfig) -> None:
    from flwr.app import ConfigRecord, Context

    from fedproof.core.protocol import WITHHELD
    from fl_client.client_app import evaluate_local

    msg = Message(RecordDict({"arrays": parent(), "config": ConfigRecord({**RunConfig(dp=True).client_record(),
                                                                          "server-round": 1})}),
                  dst_node_id=1, message_type="evaluate")
    context = Context(run_id=1, node_id=1, node_config={"client-id": "1"}, state=RecordDict(), run_config={})
    reply = evaluate_local(msg, context)
    assert ClientReport.from_reply(reply.content).status == WITHHELD and "metrics" not in reply.content


def test_policy_refusals_are_counted_recorded_and_end_a_run_only_when_everyone_refuses(
        config: RunConfig, tmp_path) -> None:
    from fedproof.core.protocol import POLICY_REFUSED
    from fl_server.lineage import Lineage
    from ledger.bundle import RoundBundle

    refusal = RecordDict({"client": ClientReport("4", POLICY_REFUSED, reason="dp-required: DP only").to_record()})
    result, _ = run(config, {1: signed_reply(config, parent(), "1", weights(1.0), 10), 2: refusal, 3: refusal, 4: refusal})
    assert not result.stop and result.metrics.policy_refused == 3 and result.metrics.budget_exhausted == 0
    lineage = Lineage(tmp_path, config, None, parent())
    lineage.record(result)
    bundle = RoundBundle.from_bytes((tmp_path / "ledger" / "round-1.json").read_bytes())
    assert sum("declined: client 4: policy-refused: dp-required" in line for line in bundle.rejected) == 3
    everyone, _ = run(config, {n: refusal for n in (1, 2, 3, 4)})
    assert "privacy policies refuse: dp-required: DP only" in everyone.stop and everyone.model is None


def test_a_client_evaluates_only_models_it_was_sent_for_training() -> None:
    from flwr.app import ConfigRecord, Context

    from fedproof.core.protocol import WITHHELD
    from fl_client.client_app import _remember_sent_model, _was_sent_for_training, evaluate_local

    crafted = weights(0.5)  # e.g. a model made to answer one class, to read the local label histogram
    msg = Message(RecordDict({"arrays": crafted, "config": ConfigRecord({**RunConfig(dp=False).client_record(),
                                                                          "server-round": 1})}),
                  dst_node_id=1, message_type="evaluate")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})  # simulated, no DP: its policy releases metrics
    reply = evaluate_local(msg, context)
    report = ClientReport.from_reply(reply.content)
    assert report.status == WITHHELD and "only models it was sent for training" in report.reason
    _remember_sent_model(context, parent())
    assert _was_sent_for_training(context, parent()) and not _was_sent_for_training(context, crafted)


def test_a_model_refused_for_training_does_not_become_evaluable(tmp_path, monkeypatch) -> None:
    """The review's sequence: a crafted model sent as `train` (refused by the device's policy), then as `evaluate`.
    Only a model the device actually trained from is remembered."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, Context
    from torch import nn

    import fl_client.client_app as client_app
    from fedproof.core.protocol import POLICY_REFUSED, TRAINED
    from fl_client.training import RoundOutcome

    config = RunConfig(dp=False, he=False, run_dir=str(tmp_path))
    crafted = weights(0.5)
    outcome = [POLICY_REFUSED]

    def job(msg, context):
        data = SimpleNamespace(dataset="fashion-mnist", train_x=None, train_y=None)
        return client_app._Job(config, 1, 0, data, nn.Linear(1, 1), msg.content["arrays"])

    monkeypatch.setattr(client_app, "_job", job)
    monkeypatch.setattr(client_app, "train_round", lambda model, x, y, cfg, state, rnd, seed, policy, declared:
                        RoundOutcome(outcome[0], 0.0, 0 if outcome[0] != TRAINED else 5, None, state,
                                     "he-required: this device requires HE"))
    monkeypatch.setattr(client_app, "sign_update", lambda content, *args: content)
    monkeypatch.setattr(client_app, "plain_update", lambda trained, parent: parent)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    msg = Message(RecordDict({"arrays": crafted, "config": ConfigRecord({**config.client_record(), "server-round": 1})}),
                  dst_node_id=1, message_type="train")
    client_app.train(msg, context)
    assert not client_app._was_sent_for_training(context, crafted)  # refused: never evaluable
    outcome[0] = TRAINED
    client_app.train(msg, context)
    assert client_app._was_sent_for_training(context, crafted)  # trained from it: the round's parent, evaluable
