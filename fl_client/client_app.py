"""The ClientApp: thin handlers that call the training and evaluation steps.

Settings come with each message (the server's resolved run config); which partition this client holds
comes from its node config (``partition-id``, ``num-partitions``: set by the simulation engine, or with
``--node-config`` on a SuperNode).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from fedproof.client_data import ClientData, load_client_data
from fedproof.config import RunConfig
from fedproof.errors import ConfigError
from fedproof.model import make_model
from fedproof.protocol import TRAINED, ClientReport
from fedproof.task import evaluate
from fl_client.state import ClientState
from fl_client.training import train_round

app = ClientApp()


@dataclass(frozen=True)
class _Job:
    """What a message asks of this client: the run's settings, the round, its data and the global model."""

    config: RunConfig
    server_round: int
    partition_id: int
    data: ClientData
    model: nn.Module


def _job(msg: Message, context: Context) -> _Job:
    settings = dict(msg.content["config"])
    server_round = int(settings.pop("server-round", 0))  # type: ignore[call-overload]
    config = RunConfig.from_mapping(settings)
    try:
        partition_id = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        num_partitions = int(context.node_config["num-partitions"])  # type: ignore[call-overload]
    except KeyError as exc:
        raise ConfigError(f"node config lacks {exc}: start the SuperNode with --node-config "
                          "'partition-id=<i> num-partitions=<n>'") from exc
    data = load_client_data(config, partition_id, num_partitions)
    model = make_model(data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return _Job(config, server_round, partition_id, data, model)


@app.train()
def train(msg: Message, context: Context) -> Message:
    job = _job(msg, context)
    seed = job.config.seed * 1_000_003 + job.server_round * 1_009 + job.partition_id
    outcome = train_round(
        job.model, job.data.train_x, job.data.train_y, job.config, ClientState.load(context), job.server_round, seed
    )
    outcome.state.save(context)
    report = ClientReport(str(job.partition_id), outcome.status, outcome.epsilon, outcome.reason)
    content = RecordDict({"client": report.to_record()})
    content["metrics"] = MetricRecord({"num-examples": outcome.num_examples})
    if outcome.status == TRAINED:
        content["arrays"] = ArrayRecord(job.model.state_dict())
        content["metrics"] = MetricRecord(
            {"train_loss": outcome.loss, "num-examples": outcome.num_examples,
             "rounds-trained": outcome.state.rounds_trained}
        )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    job = _job(msg, context)
    loss, accuracy = evaluate(job.model, job.data.val_x, job.data.val_y)
    metrics = MetricRecord({"val_loss": loss, "val_accuracy": accuracy, "num-examples": len(job.data.val_y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
