"""The checks of threshold decryption that the server and the key holders both make, written once.

The server checks each decryptor's partial before it fuses them (``fl_server.decryptors``); a co-signer checks the
same partials again before it fuses them itself (``fl_client.threshold.cosigning``), since it trusts nothing the
server forwards. Both then require the fused values to lie in the scheme's range. Each side turns a failure into
its own answer (the server sets the decryptor aside; the co-signer refuses), so these raise the typed errors of
the layers below and return nothing.
"""

from __future__ import annotations

import numpy as np

from fedproof.core.protocol import SignedEnvelope, partial_chunks
from ledger.signing import PARTIAL_TAG, payload_digest
from ledger.verification import AllowList, Domain, verify_statement
from privacy.threshold import ThresholdParams, check_partial

RANGE_SLACK = 1.01
"""Fused values may exceed the scheme's largest encodable value by this factor (decryption noise) and no more."""


def verify_partial(params: ThresholdParams, allow: AllowList, where: Domain, server_round: int, party: str,
                   decryptors: tuple[str, ...], sum_sha256: bytes, merkle_root: bytes, envelope: SignedEnvelope,
                   values: np.ndarray, rows: int) -> None:
    """``values`` are ``rows`` x N residues below q, signed by ``party`` for this run and round over (the sum,
    the leaves' Merkle root, the decryptor set, the values). Raises ``CiphertextError`` or the signature's
    ``UpdateVerificationError``."""
    check_partial(params, values, rows)
    chunks = partial_chunks(sum_sha256, merkle_root, decryptors, values.astype("<u8").tobytes())
    verify_statement(allow, where, envelope.fields, envelope.signature, tag=PARTIAL_TAG, round=server_round,
                     client_id=party, payload_sha256=payload_digest(chunks))


def fused_in_range(params: ThresholdParams, values: np.ndarray) -> bool:
    """Whether fused values are ones an honest round can produce: a wrong partial decryption scatters them over
    the whole modulus."""
    return bool(np.all(np.abs(values) <= params.max_abs_value * RANGE_SLACK))
