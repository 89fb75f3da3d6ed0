"""A federation with strangers in it: a ClientApp that is fedproof's on some partitions and, on others, a stock
Flower quickstart ClientApp (no fedproof import) or one of its hostile variants.

Imported by the Ray workers of a simulation (the test puts this directory on their PYTHONPATH).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

STRANGERS = {3: "stock", 4: "nan", 5: "wrong-shape", 6: "extra-array", 7: "no-count"}
"""partition id -> what that client sends; partitions 0, 1 and 2 run fedproof's own ClientApp."""

stock = ClientApp()


@stock.train()
def stock_train(msg: Message, context: Context) -> Message:
    """The quickstart shape: echo the arrays with ``num-examples`` (or a variant of that)."""
    variant = STRANGERS[int(context.node_config["partition-id"])]
    arrays = {k: np.asarray(v) for k, v in zip(msg.content["arrays"].keys(), msg.content["arrays"].to_numpy_ndarrays())}
    if variant == "nan":
        arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
    elif variant == "wrong-shape":
        first = next(iter(arrays))
        arrays[first] = arrays[first].reshape(-1)
    elif variant == "extra-array":
        arrays["extra"] = np.zeros(3, np.float32)
    metrics = {"train_loss": 0.1} if variant == "no-count" else {"train_loss": 0.1, "num-examples": 5}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


@stock.evaluate()
def stock_evaluate(msg: Message, context: Context) -> Message:
    metrics = MetricRecord({"eval_loss": 0.3, "eval_acc": 0.9, "num-examples": 64})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


mixed = ClientApp()


def _route(msg: Message, context: Context) -> Message:
    if int(context.node_config["partition-id"]) in STRANGERS:
        return stock(msg, context)
    from fl_client.client_app import app as fedproof_app

    return fedproof_app(msg, context)


mixed.train()(_route)
mixed.evaluate()(_route)
mixed.query("decrypt")(_route)
