"""Building rounds by hand: signed replies for a fake grid, RoundResults for what consumes them (lineage, deploy)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict

from fedproof.protocol import ClientReport, SignedEnvelope
from fl_client.signing import sign_update
from fedproof.weights import hash_model
from fedproof.replies import Update
from fl_server.admission import Admitted
from fl_server.round import RoundResult
from fl_server.decryptors import Endorsement
from ledger.bundle import Cosignature, RoundBundle, SignedUpdate
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


def endorse(config, rnd: int, parent: ArrayRecord, model: ArrayRecord, leaves: list[SignedUpdate],
            signers: dict[str, SigningKey], threshold: int, holders: int) -> Endorsement:
    """Key holders' co-signatures of (parent -> model) over ``leaves``, as honest devices would sign them."""
    bundle = RoundBundle(config.run_id, rnd, config.chain_id, config.contract_bytes(), hash_model(parent, config.run_id),
                         hash_model(model, config.run_id), tuple(leaves), genesis=config.genesis_bytes(),
                         threshold=threshold, holders=holders)
    return Endorsement(threshold, holders, tuple(
        Cosignature(c, key.public_key, key.sign(bundle.statement(c))) for c, key in signers.items()))


def signed_reply(config, parent: ArrayRecord, client: str, arrays: ArrayRecord | None, count: int,
                 server_round: int = 1, epsilon: float | None = None, claimed_epsilon: float | None = None,
                 **metrics) -> RecordDict:
    """A fedproof client's plaintext train reply, trained from ``parent``, signed with ``client``'s key from
    ``config.key_set``; it signs ``epsilon`` and its unsigned report claims ``claimed_epsilon``."""
    content = RecordDict({"client": ClientReport(client, epsilon=claimed_epsilon).to_record(),
                          "metrics": MetricRecord({"num-examples": count, **metrics})})
    if arrays is not None:
        content["arrays"] = arrays
    context = Context(run_id=1, node_id=1, node_config={"client-id": client}, state=RecordDict(), run_config={})
    return sign_update(content, config, context, server_round, count, epsilon, hash_model(parent, config.run_id))


def trained_model(data):
    """The default model with its head trained a little on ``data`` (deterministic)."""
    import torch

    from fedproof.model import make_model
    from fedproof.task import features

    torch.manual_seed(0)
    model = make_model(num_classes=data.num_classes)
    x, y = features(model, data.train_x), torch.from_numpy(data.train_y.astype("int64"))
    opt = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(y), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model.head(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    return model.eval()


def record_trained_run(chain, run_path, data, clients: dict[str, SigningKey], run_id: str = "r"):
    """Run ``run_id`` in ``run_path``: one round recorded on ``chain`` (clients registered, co-signed by both), whose
    model is :func:`trained_model`; ``model.safetensors`` is its final model. Returns the torch model."""
    import json

    from fedproof.config import RunConfig
    from fedproof.model import make_model
    from fl_server.lineage import Lineage, register_clients
    from ledger.signing import SignedFields, payload_digest
    from ledger.verification import AllowList

    register_clients(chain, AllowList({c: k.public_key for c, k in clients.items()}))
    config = RunConfig(run_id=run_id, chain_id=chain.chain_id, ledger_contract=chain.address,
                       chain_genesis="0x" + chain.genesis.hex())
    run_path.mkdir(parents=True)
    (run_path / "run.json").write_text(json.dumps({"config": config.to_mapping()}))
    initial, model = ArrayRecord(make_model(num_classes=data.num_classes).state_dict()), trained_model(data)
    trained = ArrayRecord(model.state_dict())
    lineage = Lineage(run_path, config, chain, initial)
    leaves = []
    for client, key in clients.items():
        fields = SignedFields(chain_id=chain.chain_id, contract=config.contract_bytes(), run_id=run_id, round=1,
                              client_id=client, payload_sha256=payload_digest([client.encode()]), num_examples=50,
                              genesis=chain.genesis, parent_model_hash=hash_model(initial, run_id))
        leaves.append(SignedUpdate(fields, key.public_key, key.sign(fields)))
    lineage.record(round_result(1, initial, trained, leaves, endorsement=endorse(
        config, 1, initial, trained, leaves, clients, len(clients), len(clients))))
    lineage.final_model(run_path / "model.safetensors")
    return model
