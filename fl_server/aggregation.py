"""FedAvg as plain arithmetic: the example-weighted sum of admitted updates, in the clear or under CKKS.

Both paths end the same way: ``new = global + sum(n_k * delta_k) / sum(n_k)`` (:func:`apply_mean`). Under HE
the server adds the ciphertexts under the clients' joint key (:func:`threshold_sum`) and t key holders decrypt
only the sum (``fl_server.decryptors``); the server holds no key and no share of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedproof.core.replies import Reason, Rejection
from fl_server.admission import Admitted
from privacy.errors import CiphertextError
from privacy.ring import addmod
from privacy.threshold import ThresholdParams, sum_ciphertexts


def plain_sum(admitted: list[Admitted]) -> np.ndarray:
    """``sum(n_k * delta_k)`` over plaintext updates (the decoder has checked each one's shape and values)."""
    return np.sum([a.update.num_examples * a.update.delta for a in admitted], axis=0)


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

