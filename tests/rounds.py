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
