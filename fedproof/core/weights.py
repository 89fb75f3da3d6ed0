"""Model weights as one flat float64 vector and back: what HE encrypts and sums is a single vector.

Both sides flatten in the ArrayRecord's own order (the model's ``state_dict`` order), so a vector made by a
client lines up with the server's global model without naming the layers.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from ledger.signing import model_file_bytes, model_hash


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


def apply_mean(parent: ArrayRecord, weighted_sum: np.ndarray, num_examples: int, server_lr: float = 1.0
               ) -> ArrayRecord:
    """The new global model: the parent plus ``server_lr`` times the example-weighted mean update, in the parent's
    layout. The server and each co-signing client compute it with these same float operations, so they agree bit
    for bit."""
    step = weighted_sum / num_examples
    if server_lr != 1.0:
        step = step * server_lr
    return unflatten(flatten(parent) + step, parent)


def tensors(record: ArrayRecord) -> dict[str, np.ndarray]:
    return dict(zip(record.keys(), record.to_numpy_ndarrays()))


def model_bytes(record: ArrayRecord, run_id: str) -> bytes:
    """The model file's exact bytes (safetensors): what the lineage hashes and records."""
    return model_file_bytes(tensors(record), run_id)


def hash_model(record: ArrayRecord, run_id: str) -> bytes:
    """SHA-256 of :func:`model_bytes`: the model hash a client signs as its parent and co-signs as a result."""
    return model_hash(tensors(record), run_id)
