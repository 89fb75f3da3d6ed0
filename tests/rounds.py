"""Building RoundResults by hand, for tests of what consumes them (lineage, deploy)."""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedproof.protocol import SignedEnvelope
from fedproof.replies import Update
from fl_server.admission import Admitted
from fl_server.round import RoundResult
from ledger.bundle import SignedUpdate


def round_result(rnd: int, parent: ArrayRecord, model: ArrayRecord | None, leaves: list[SignedUpdate] = (),
                 failure: str = "") -> RoundResult:
    """A round that produced ``model`` (None: failed with ``failure``) from updates signed as ``leaves``."""
    admitted = tuple(
        Admitted(Update(node_id=i, client_id=leaf.fields.client_id, num_examples=leaf.fields.num_examples,
                        epsilon=None, envelope=SignedEnvelope(leaf.fields, leaf.signature),
                        payload_sha256=leaf.fields.payload_sha256, delta=None, ciphertexts=None, upload_bytes=0),
                 leaf)
        for i, leaf in enumerate(leaves)
    )
    return RoundResult(rnd, parent, model, admitted, (), (), (), failure, "", None)
