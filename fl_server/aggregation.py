"""FedAvg as plain arithmetic: the example-weighted sum of admitted updates, in the clear or under CKKS.

Both paths end the same way: ``new = global + sum(n_k * delta_k) / sum(n_k)`` (:func:`apply_mean`). Under HE
the server adds ciphertexts (:func:`add_ciphertexts`) and a committee of clients decrypts only the sum
(``fl_server.committee``); the server holds a public context and no key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fedproof.protocol import EncryptedPayload
from fedproof.replies import Reason, Rejection
from fedproof.weights import flatten, unflatten
from fl_server.admission import Admitted
from privacy.errors import CiphertextError
from privacy.he import PublicContext
from privacy.ring import addmod
from privacy.threshold import ThresholdParams, sum_ciphertexts


@dataclass(frozen=True)
class EncryptedTotal:
    """The round's encrypted sum and the updates in it (an update SEAL cannot parse is rejected alone)."""

    payload: EncryptedPayload | None
    used: tuple[Admitted, ...]
    rejections: tuple[Rejection, ...]

    @property
    def num_examples(self) -> int:
        return sum(a.update.num_examples for a in self.used)


def plain_sum(admitted: list[Admitted]) -> np.ndarray:
    """``sum(n_k * delta_k)`` over plaintext updates (the decoder has checked each one's shape and values)."""
    return np.sum([a.update.num_examples * a.update.delta for a in admitted], axis=0)


def add_ciphertexts(public: PublicContext, num_values: int, admitted: list[Admitted]) -> EncryptedTotal:
    total = public.new_sum(num_values)
    used, rejections = [], []
    for a in admitted:
        try:
            total.add(a.update.ciphertexts.chunks)  # all chunks parse, or the sum is left untouched
        except CiphertextError as exc:
            rejections.append(Rejection(a.update.node_id, a.update.client_id, Reason.CORRUPT_CIPHERTEXT, str(exc)))
            continue
        used.append(a)
    payload = EncryptedPayload(tuple(total.serialize()), num_values, total.count) if used else None
    return EncryptedTotal(payload, tuple(used), tuple(rejections))


@dataclass(frozen=True)
class ThresholdTotal:
    """The round's summed ciphertexts under the joint key ((chunks, 2, N) residues), and the updates in it."""

    values: np.ndarray | None
    used: tuple[Admitted, ...]
    rejections: tuple[Rejection, ...]


def threshold_sum(params: ThresholdParams, admitted: list[Admitted]) -> ThresholdTotal:
    """Add the admitted updates' ciphertexts; one that does not parse is rejected alone."""
    total, used, rejections = None, [], []
    for a in admitted:
        try:
            polys = sum_ciphertexts(params, [a.update.ciphertexts.chunks])  # type: ignore[union-attr]
        except CiphertextError as exc:
            rejections.append(Rejection(a.update.node_id, a.update.client_id, Reason.CORRUPT_CIPHERTEXT, str(exc)))
            continue
        total = polys if total is None else addmod(total, polys, params.q)
        used.append(a)
    return ThresholdTotal(total, tuple(used), tuple(rejections))

