"""A client's half of aggregation: check its update before it leaves the device, sent in the clear (without HE)
or as ``delta`` for :func:`fl_client.threshold.encrypt_update` to encrypt under the run's joint key."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedproof.core.protocol import PLAIN_MAX_ABS_DELTA
from fedproof.core.weights import flatten
from privacy.errors import PlaintextRangeError


def checked_delta(trained: ArrayRecord, global_arrays: ArrayRecord, bound: float) -> np.ndarray:
    """``trained - global``, flat; refused (rather than sent and rejected) if it is not finite or out of range."""
    delta = flatten(trained) - flatten(global_arrays)
    if not np.all(np.isfinite(delta)):
        raise PlaintextRangeError("the trained model holds NaN or infinite weights; not sending this update")
    peak = float(np.abs(delta).max())
    if peak > bound:
        raise PlaintextRangeError(
            f"update too large to send: max |delta| {peak:.3g} > {bound:g} (lower the learning rate)"
        )
    return delta


def plain_update(trained: ArrayRecord, global_arrays: ArrayRecord) -> ArrayRecord:
    """The trained weights as they are sent without HE, after the same range check the server applies."""
    checked_delta(trained, global_arrays, PLAIN_MAX_ABS_DELTA)
    return trained
