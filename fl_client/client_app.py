"""The ClientApp: thin handlers that call the training and evaluation steps.

Settings come with each message (the server's resolved run config); which partition this client holds
comes from its node config (``partition-id``, ``num-partitions``: set by the simulation engine, or with
``--node-config`` on a SuperNode).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
import torch
from torch import nn

from fedproof.base.records import get_record
from fedproof.core.client_data import ClientData, load_client_data, own_client_data
from fedproof.core.config import ClientSettings, RunConfig
from fedproof.base.errors import ConfigError
from fedproof.core.task import BUILT_IN, Task, load_task
from fedproof.core.protocol import (
    ARRAYS_KEY,
    PLAIN_MAX_ABS_DELTA,
    PUBLIC_KEY_KEY,
    ROUND_KEY,
    TRAINED,
    WITHHELD,
    ClientReport,
    model_digest,
)
from fedproof.core.features import evaluate
from fedproof.core.weights import hash_model
from fl_client.device import Device
from fl_client.policy import client_policy
from fl_client.signing import client_id, device_paths, sign_update
from fl_client import threshold
from fl_client.secure_update import checked_delta, plain_update
from fl_client.state import ClientState, state_file
from fl_client.training import train_round
from fl_client.user_level import user_level_check_in, user_level_reply

app = ClientApp()


@dataclass(frozen=True)
class _Job:
    """What a message asks of this client: the run's settings, the round, its data and the global model."""

    config: RunConfig
    server_round: int
    partition_id: int
    data: ClientData
    model: nn.Module
    global_arrays: ArrayRecord


def _settings(msg: Message, context: Context) -> tuple[RunConfig, int]:
    """The run's settings and the round number, which the server sends with every message; on a device, without
    any path the server names (the device's own come from its node config)."""
    settings = dict(msg.content["config"])
    server_round = int(settings.pop(ROUND_KEY, 0))  # type: ignore[call-overload]
    return device_paths(ClientSettings.from_record(settings).run_config(), context), server_round


def device_task(config: RunConfig, device: Device) -> Task:
    """The task this client trains. A device trains the task its node config names, and refuses a run of another;
    a device that names none takes only a built-in task (a server must not make it import a module of its choice).
    A simulated client takes the run's."""
    if device.task and device.task != config.task:
        raise ConfigError(f"the server runs task {config.task!r}; this device trains {device.task!r} (its node config)")
    if device.on_device and not device.task and config.task not in BUILT_IN:
        raise ConfigError(f"the server names task {config.task!r}, which this device does not name in its node "
                          "config (task=...); a device loads only built-in tasks unless it names its own")
    return load_task(config.task)


_OWN_DATA: dict[tuple, ClientData] = {}


def own_data(config: RunConfig, task: Task, path: Path) -> ClientData:
    """A device's own records (read once per process while the files are unchanged), split for training."""
    stat = path.stat() if path.exists() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, task.name, config.seed,
           config.val_fraction)
    if key not in _OWN_DATA:
        x, y = task.device_records(path)
        identity = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
        _OWN_DATA.clear()
        _OWN_DATA[key] = own_client_data(config, (x, y), task.num_classes, identity)
    return _OWN_DATA[key]


def _data(config: RunConfig, context: Context) -> tuple[RunConfig, Task, ClientData, int]:
    """This device's task and records (its own, or its partition of the task's in a simulation), and its partition."""
    device = Device.of(context)
    if device.threads > 0:  # a device sharing its CPUs (or several SuperNodes on one host) caps torch's threads
        torch.set_num_threads(device.threads)
    partition_id, num_partitions = device.partition_id, device.num_partitions
    if partition_id is None or num_partitions is None:
        raise ConfigError("node config lacks partition-id or num-partitions: start the SuperNode with "
                          "--node-config 'partition-id=<i> num-partitions=<n>'")
    task = device_task(config, device)
    if device.data is not None:  # a device's own records, in the task's terms
        return config, task, own_data(config, task, device.data), partition_id
    if device.data_dir:  # a device's own copy of the data, wherever it keeps it
        config = config.with_overrides(data_dir=device.data_dir)
    return config, task, load_client_data(config, partition_id, num_partitions), partition_id


def _job(msg: Message, context: Context) -> _Job:
    config, server_round = _settings(msg, context)
    config, task, data, partition_id = _data(config, context)
    model = task.model(config.model, data.num_classes)
    global_arrays = msg.content["arrays"]
    model.load_state_dict(global_arrays.to_torch_state_dict())
    return _Job(config, server_round, partition_id, data, model, global_arrays)


SENT_MODELS_KEY = "fedproof.client.sent-models"
"""Context.state: digests of the global models this client was sent for training in this run (the only models
it evaluates)."""


def _remember_sent_model(context: Context, arrays: ArrayRecord) -> None:
    record = get_record(context.state, SENT_MODELS_KEY, ConfigRecord)
    seen = list(record["digests"]) if record is not None else []  # type: ignore[arg-type]
    context.state[SENT_MODELS_KEY] = ConfigRecord({"digests": (seen + [model_digest(arrays)])[-16:]})


def _was_sent_for_training(context: Context, arrays: ArrayRecord) -> bool:
    record = get_record(context.state, SENT_MODELS_KEY, ConfigRecord)
    return record is not None and model_digest(arrays) in list(record["digests"])  # type: ignore[arg-type]


@app.train()
def train(msg: Message, context: Context) -> Message:
    job = _job(msg, context)
    seed = job.config.seed * 1_000_003 + job.server_round * 1_009 + job.partition_id
    started = time.perf_counter()
    saved = state_file(context, job.config.run_dir, client_id(context), job.data.dataset)
    state = ClientState.load(context, saved, job.config.run_id)
    if job.config.dp and job.config.privacy == "user":  # each device's whole dataset: its own coin and accountant
        content = user_level_reply(job.config, job.server_round, job.model, job.data, job.global_arrays, context,
                                   state, seed, lambda kept: kept.save(context, saved),
                                   get_record(msg.content, PUBLIC_KEY_KEY, ArrayRecord))
        return Message(content, reply_to=msg)
    policy = client_policy(job.config, context)
    # the weight this client's update carries: its registered, declared dataset size on a device (its privacy is
    # accounted from it too, so the signed epsilon does not tell the true size); its exact count in a simulation
    # (where the server registered the partition sizes)
    declared = Device.of(context).declared_examples
    outcome = train_round(
        job.model, job.data.train_x, job.data.train_y, job.config, state, job.server_round, seed, policy, declared,
    )
    trained_at = time.perf_counter()
    outcome.state.save(context, saved)
    report = ClientReport(client_id(context), outcome.status, outcome.epsilon, outcome.reason)
    content = RecordDict({"client": report.to_record()})
    content["metrics"] = MetricRecord({"num-examples": outcome.num_examples})
    weight = declared or outcome.num_examples
    if outcome.status == TRAINED:
        # only a model this device's policy let it train from may be evaluated later: a model refused here (or a
        # crafted one sent as `train` first) must not become evaluable, or it could probe the local data
        _remember_sent_model(context, job.global_arrays)
        trained = ArrayRecord(job.model.state_dict())
        if job.config.he:
            delta = checked_delta(trained, job.global_arrays, PLAIN_MAX_ABS_DELTA)
            threshold.encrypt_update(delta, weight, context,
                                     get_record(msg.content, PUBLIC_KEY_KEY, ArrayRecord)).put(content)
        else:
            content[ARRAYS_KEY] = plain_update(trained, job.global_arrays)
        metrics = {"num-examples": weight, "rounds-trained": outcome.state.rounds_trained,
                   "train-seconds": trained_at - started}
        if outcome.epsilon is None and policy.release_metrics:  # under DP the loss stays: nothing accounts for it
            metrics["train_loss"] = outcome.loss
        content["metrics"] = MetricRecord(metrics)
        sign_update(content, job.config, context, job.server_round, weight, outcome.epsilon,
                    hash_model(job.global_arrays, job.config.run_id))
        if job.config.he:  # commit now (the signature covers the ciphertexts), reveal once the round's set is frozen
            threshold.withhold(content, job.server_round, context)
        content["metrics"]["secure-seconds"] = time.perf_counter() - trained_at  # encrypt + sign; not signed itself
    return Message(content, reply_to=msg)


@app.query("check_in")
def check_in(msg: Message, context: Context) -> Message:
    """User-level DP, before any model is sent: whether this device takes part in the round (its own coin, kept with
    one accountant step), or why it declines. A train message for the round then gets the same answer."""
    config, server_round = _settings(msg, context)
    config, _, data, _ = _data(config, context)
    saved = state_file(context, config.run_dir, client_id(context), data.dataset)
    state = ClientState.load(context, saved, config.run_id)
    content = user_level_check_in(config, server_round, context, state, lambda kept: kept.save(context, saved))
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    config, _ = _settings(msg, context)
    policy = client_policy(config, context)
    if config.dp or policy.dp_required or not policy.release_metrics:  # exact accuracy and loss are outside what
        report = ClientReport(client_id(context), WITHHELD,  # an accountant covers: they stay on the device
                              reason="this client's policy releases no validation metrics (DP: only what its "
                                     "accountant covers)")
        return Message(RecordDict({"client": report.to_record()}), reply_to=msg)
    if not _was_sent_for_training(context, msg.content["arrays"]):  # crafted models would probe the local data
        report = ClientReport(client_id(context), WITHHELD,
                              reason="this client evaluates only models it was sent for training in this run")
        return Message(RecordDict({"client": report.to_record()}), reply_to=msg)
    job = _job(msg, context)
    loss, accuracy = evaluate(job.model, job.data.val_x, job.data.val_y)
    metrics = MetricRecord({"val_loss": loss, "val_accuracy": accuracy, "num-examples": len(job.data.val_y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


# ----------------------------------------------------------------------------------------- threshold HE


@app.query("keygen_hello")
def keygen_hello(msg: Message, context: Context) -> Message:
    """Key ceremony, step 1: announce this device's contribution to the common polynomial and its share key."""
    config, _ = _settings(msg, context)
    return Message(threshold.keygen_hello(config, context), reply_to=msg)


@app.query("keygen_commit")
def keygen_commit(msg: Message, context: Context) -> Message:
    """Key ceremony, step 2: make this device's deal (public-key share, sealed Shamir shares); send its commitment."""
    config, _ = _settings(msg, context)
    return Message(threshold.keygen_commit(msg.content, config, context), reply_to=msg)


@app.query("keygen_reveal")
def keygen_reveal(msg: Message, context: Context) -> Message:
    """Key ceremony, step 3: reveal the deal to the frozen set of every party's commitment (once)."""
    config, _ = _settings(msg, context)
    return Message(threshold.keygen_reveal(msg.content, config, context), reply_to=msg)


@app.query("keygen_finish")
def keygen_finish(msg: Message, context: Context) -> Message:
    """Key ceremony, step 4: sign the key statement of the joint key this device computed, or complain about a
    dealer whose share does not open."""
    config, _ = _settings(msg, context)
    return Message(threshold.keygen_finish(msg.content, config, context), reply_to=msg)


@app.query("keygen_confirm")
def keygen_confirm(msg: Message, context: Context) -> Message:
    """Key ceremony, step 5: start using the key once every holder signed the same key statement."""
    config, _ = _settings(msg, context)
    return Message(threshold.keygen_confirm(msg.content, config, context), reply_to=msg)


@app.query("draw_commit")
def draw_commit(msg: Message, context: Context) -> Message:
    """Committee draw, step 1: a fresh secret for this draw, answered by its commitment only."""
    config, _ = _settings(msg, context)
    return Message(threshold.draw_commit(msg.content, config, context), reply_to=msg)


@app.query("draw_reveal")
def draw_reveal(msg: Message, context: Context) -> Message:
    """Committee draw, step 2: reveal the secret to the frozen list that holds this device's commitment (once)."""
    config, _ = _settings(msg, context)
    return Message(threshold.draw_reveal(msg.content, config, context), reply_to=msg)


@app.query("key_join")
def key_join(msg: Message, context: Context) -> Message:
    """Outside the committee: keep the committee's joint public key, once the draw and every signature check."""
    config, _ = _settings(msg, context)
    return Message(threshold.key_join(msg.content, config, context), reply_to=msg)


@app.query("reveal_update")
def reveal_update(msg: Message, context: Context) -> Message:
    """Reveal this round's committed ciphertexts to the frozen set of the round's commitments (once per round)."""
    config, server_round = _settings(msg, context)
    return Message(threshold.reveal_update(msg.content, config, server_round, context, config.min_contributors),
                   reply_to=msg)


@app.query("decrypt_share")
def decrypt_share(msg: Message, context: Context) -> Message:
    """As one of t key holders: check the round's signed leaves and sum, then send a flooded partial decryption."""
    config, server_round = _settings(msg, context)
    return Message(threshold.decrypt_share(msg.content, config, server_round, context, config.min_contributors),
                   reply_to=msg)


@app.query("cosign_model")
def cosign_model(msg: Message, context: Context) -> Message:
    """As a key holder: fuse the round's signed partial decryptions, compute the new model from the parent, and
    sign its hash if it is the one the server names (the lineage records a model only clients vouched for)."""
    config, server_round = _settings(msg, context)
    return Message(threshold.cosign_model(msg.content, config, server_round, context, config.min_contributors),
                   reply_to=msg)
