"""Building rounds by hand: signed replies for a fake grid, RoundResults for what consumes them (lineage, deploy)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict

from fedproof.core.protocol import ClientReport, SignedEnvelope
from fl_client.signing import sign_update
from fedproof.core.weights import hash_model
from fedproof.core.replies import Update
from fl_server.admission import Admitted
from fl_server.round import RoundResult
from fl_server.decryptors import Endorsement
from ledger.bundle import Cosignature, RoundBundle, SignedUpdate
from ledger.key_statement import KeyStatement, SignedKeyStatement
from pins import device_pin
from ledger.signing import SigningKey


def round_result(rnd: int, parent: ArrayRecord, model: ArrayRecord | None, leaves: list[SignedUpdate] = (),
                 failure: str = "", endorsement: Endorsement | None = None) -> RoundResult:
    """A round that produced ``model`` (None: failed with ``failure``) from updates signed as ``leaves``, co-signed
    as ``endorsement``."""
    admitted = tuple(
        Admitted(Update(node_id=i, client_id=leaf.fields.client_id, num_examples=leaf.fields.num_examples,
                        epsilon=None, envelope=SignedEnvelope(leaf.fields, leaf.signature),
                        payload_sha256=leaf.fields.payload_sha256, delta=None, ciphertexts=None, upload_bytes=0),
                 leaf)
        for i, leaf in enumerate(leaves)
    )
    return RoundResult(rnd, parent, model, admitted, (), (), (), failure, "", None, endorsement)


def key_statement(config, holders: Mapping[str, SigningKey], threshold: int, first_round: int = 1,
                  weight_scale: int = 1000, signers: Mapping[str, SigningKey] | None = None) -> SignedKeyStatement:
    """The run's key statement, ``threshold`` of ``holders``, signed by each holder for ``config``'s chain, contract
    and run (``signers`` overrides whose key signs for which holder). Deterministic: the same arguments, the same
    statement and signatures."""
    statement = KeyStatement(hashlib.sha256(f"joint key of {config.run_id}".encode()).digest(), threshold,
                             tuple(sorted(holders)), weight_scale, first_round)
    keys = {**holders, **(signers or {})}
    return SignedKeyStatement(statement, {h: keys[h].sign(statement.fields(
        h, config.chain_id, config.contract_bytes(), config.genesis_bytes(), config.run_id)) for h in statement.holders})


def endorse(config, rnd: int, parent: ArrayRecord, model: ArrayRecord, leaves: list[SignedUpdate],
            signers: Mapping[str, SigningKey], key: SignedKeyStatement, claim: tuple[int, int] | None = None
            ) -> Endorsement:
    """``signers``' co-signatures of (parent -> model) over ``leaves`` under ``key``, as honest devices sign them;
    the server writes ``claim`` (t, n) into the bundle (default: the key's)."""
    bundle = RoundBundle(config.run_id, rnd, config.chain_id, config.contract_bytes(), hash_model(parent, config.run_id),
                         hash_model(model, config.run_id), tuple(leaves), genesis=config.genesis_bytes(),
                         key_sha256=key.statement.sha256)
    t, n = claim or (key.statement.threshold, len(key.statement.holders))
    return Endorsement(threshold=t, holders=n, cosignatures=tuple(
        Cosignature(c, k.public_key, k.sign(bundle.statement(c))) for c, k in signers.items()),
        key_sha256=key.statement.sha256)


def signed_reply(config, parent: ArrayRecord, client: str, arrays: ArrayRecord | None, count: int,
                 server_round: int = 1, epsilon: float | None = None, claimed_epsilon: float | None = None,
                 **metrics) -> RecordDict:
    """A fedproof client's plaintext train reply, trained from ``parent``, signed with ``client``'s key from
    ``config.key_set``; it signs ``epsilon`` and its unsigned report claims ``claimed_epsilon``."""
    content = RecordDict({"client": ClientReport(client, epsilon=claimed_epsilon).to_record(),
                          "metrics": MetricRecord({"num-examples": count, **metrics})})
    if arrays is not None:
        content["arrays"] = arrays
    context = Context(run_id=1, node_id=1, node_config={"client-id": client, "ledger-trust": device_pin(config)},
                      state=RecordDict(), run_config={})
    return sign_update(content, config, context, server_round, count, epsilon, hash_model(parent, config.run_id))


def trained_model(data, task: str = "fashion-mnist"):
    """``task``'s default model with its head trained a little on ``data`` (deterministic)."""
    import torch

    from fedproof.core.features import features
    from fedproof.core.task import load_task

    torch.manual_seed(0)
    model = load_task(task).model(num_classes=data.num_classes)
    x, y = features(model, data.train_x), torch.from_numpy(data.train_y.astype("int64"))
    opt = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model.head(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    return model.eval()


def record_trained_run(chain, run_path, data, clients: dict[str, SigningKey], run_id: str = "r",
                       task: str = "fashion-mnist"):
    """Run ``run_id`` in ``run_path``: one round recorded on ``chain`` (clients registered, an all-of-them key
    statement recorded, co-signed by all), whose model is :func:`trained_model`; ``model.safetensors`` is its final
    model. Returns the torch model."""
    import json

    from fedproof.core.config import RunConfig
    from fedproof.core.task import load_task
    from fl_server.lineage import Lineage
    from fl_server.startup import register_clients
    from ledger.signing import SignedFields, payload_digest
    from ledger.verification import AllowList

    register_clients(chain, AllowList({c: k.public_key for c, k in clients.items()}))
    config = RunConfig(run_id=run_id, chain_id=chain.chain_id, ledger_contract=chain.address,
                       chain_genesis="0x" + chain.genesis.hex(), task=task)
    run_path.mkdir(parents=True)
    (run_path / "run.json").write_text(json.dumps({"config": config.to_mapping()}))
    initial = ArrayRecord(load_task(task).model(num_classes=data.num_classes).state_dict())
    model = trained_model(data, task)
    trained = ArrayRecord(model.state_dict())
    lineage = Lineage(run_path, config, chain, initial)
    run_key = key_statement(config, clients, len(clients))
    lineage.record_key(run_key)
    leaves = []
    for client, key in clients.items():
        fields = SignedFields(chain_id=chain.chain_id, contract=config.contract_bytes(), run_id=run_id, round=1,
                              client_id=client, payload_sha256=payload_digest([client.encode()]), num_examples=50,
                              genesis=chain.genesis, parent_model_hash=hash_model(initial, run_id))
        leaves.append(SignedUpdate(fields, key.public_key, key.sign(fields)))
    lineage.record(round_result(1, initial, trained, leaves, endorsement=endorse(
        config, 1, initial, trained, leaves, clients, run_key)))
    lineage.final_model(run_path / "model.safetensors")
    return model
