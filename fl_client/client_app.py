"""The ClientApp: thin handlers that call the training and evaluation steps.

Settings come with each message (the server's resolved run config); which partition this client holds
comes from its node config (``partition-id``, ``num-partitions``: set by the simulation engine, or with
``--node-config`` on a SuperNode).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedproof.client_data import ClientData, load_client_data
from fedproof.config import RunConfig
from fedproof.errors import ConfigError
from fedproof.model import make_model
from fedproof.protocol import TRAINED, ClientReport
from fedproof.task import evaluate
from fl_client.state import ClientState
from fl_client.training import train_round

app = ClientApp()


def _settings(msg: Message) -> tuple[RunConfig, int]:
    config = dict(msg.content["config"])
    server_round = int(config.pop("server-round", 0))  # type: ignore[call-overload]
    return RunConfig.from_mapping(config), server_round


def _data(context: Context, config: RunConfig) -> tuple[ClientData, int]:
    try:
        partition_id = int(context.node_config["partition-id"])  # type: ignore[call-overload]
        num_partitions = int(context.node_config["num-partitions"])  # type: ignore[call-overload]
    except KeyError as exc:
        raise ConfigError(f"node config lacks {exc}: start the SuperNode with --node-config "
                          "'partition-id=<i> num-partitions=<n>'") from exc
    return load_client_data(config, partition_id, num_partitions), partition_id


@app.train()
def train(msg: Message, context: Context) -> Message:
    config, server_round = _settings(msg)
    data, partition_id = _data(context, config)
    model = make_model(data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    seed = config.seed * 1_000_003 + server_round * 1_009 + partition_id
    outcome = train_round(model, data.train_x, data.train_y, config, ClientState.load(context), server_round, seed)
    outcome.state.save(context)
    report = ClientReport(str(partition_id), outcome.status, outcome.epsilon, outcome.reason)
    content = RecordDict({"client": report.to_record()})
    content["metrics"] = MetricRecord({"num-examples": outcome.num_examples})
    if outcome.status == TRAINED:
        content["arrays"] = ArrayRecord(model.state_dict())
        content["metrics"] = MetricRecord(
            {"train_loss": outcome.loss, "num-examples": outcome.num_examples,
             "rounds-trained": outcome.state.rounds_trained}
        )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    config, _ = _settings(msg)
    data, _ = _data(context, config)
    model = make_model(data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate(model, data.val_x, data.val_y)
    metrics = MetricRecord({"val_loss": loss, "val_accuracy": accuracy, "num-examples": len(data.val_y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
