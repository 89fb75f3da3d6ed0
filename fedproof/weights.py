"""Model weights as one flat float64 vector and back: what HE encrypts and sums is a single vector.

Both sides flatten in the ArrayRecord's own order (the model's ``state_dict`` order), so a vector made by a
client lines up with the server's global model without naming the layers.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def flatten(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([a.ravel() for a in record.to_numpy_ndarrays()]).astype(np.float64)


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """An ArrayRecord with ``like``'s keys, shapes and dtypes, filled from ``vector``."""
    out, offset = {}, 0
    for key, array in zip(like.keys(), like.to_numpy_ndarrays()):
        out[key] = Array(vector[offset : offset + array.size].reshape(array.shape).astype(array.dtype))
        offset += array.size
    if offset != vector.size:
        raise ValueError(f"vector of {vector.size} values does not fit a model of {offset} parameters")
    return ArrayRecord(out)


def num_values(record: ArrayRecord) -> int:
    return sum(a.size for a in record.to_numpy_ndarrays())
