"""A client's half of aggregation: check and encrypt ``n_k * delta_k`` (or send it checked, without HE), and
decrypt a sum when on the committee.

The secret context is found, in order, at the SuperNode's node config ``he-context`` (a deployment: each
device holds its own copy) or at ``<key-set>/he-client.ctx`` from the run config (a simulation: the server
generated the key set in a child process, and the clients share its file system).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context

from fedproof.config import RunConfig
from fedproof.errors import ConfigError
from fedproof.protocol import PLAIN_MAX_ABS_DELTA, EncryptedPayload
from fedproof.weights import flatten
from privacy.errors import PlaintextRangeError
from fedproof.keys import KeySet
from privacy.he import SecretContext, round_for_release


def secret_context(config: RunConfig, context: Context) -> SecretContext:
    path = context.node_config.get("he-context") or (KeySet(Path(config.key_set)).he_client if config.key_set else "")
    if not path:
        raise ConfigError("HE is on but this client has no key: start the SuperNode with --node-config "
                          "'he-context=/path/he-client.ctx' (from `fedproof keys init`)")
    return _load(str(Path(str(path)).expanduser().resolve()))


@lru_cache(maxsize=4)
def _load(path: str) -> SecretContext:
    return SecretContext.load(Path(path))


def checked_delta(trained: ArrayRecord, global_arrays: ArrayRecord, bound: float) -> np.ndarray:
    """``trained - global``, flat; refused (rather than sent and rejected) if it is not finite or out of range."""
    delta = flatten(trained) - flatten(global_arrays)
    if not np.all(np.isfinite(delta)):
        raise PlaintextRangeError("the trained model holds NaN or infinite weights; not sending this update")
    peak = float(np.abs(delta).max())
    if peak > bound:
        raise PlaintextRangeError(
            f"update too large to send: max |delta| {peak:.3g} > {bound:g} (lower the learning rate, or "
            "make a key set with a larger max_abs_delta)"
        )
    return delta


def encrypt_update(trained: ArrayRecord, global_arrays: ArrayRecord, num_examples: int,
                   secret: SecretContext) -> EncryptedPayload:
    """Ciphertexts of ``num_examples * (trained - global)``, refused if the update is out of range."""
    delta = checked_delta(trained, global_arrays, secret.params.max_abs_delta)
    return EncryptedPayload(tuple(secret.encrypt(num_examples * delta)), delta.size)


def plain_update(trained: ArrayRecord, global_arrays: ArrayRecord) -> ArrayRecord:
    """The trained weights as they are sent without HE, after the same range check the server applies."""
    checked_delta(trained, global_arrays, PLAIN_MAX_ABS_DELTA)
    return trained


def decrypt_sum(payload: EncryptedPayload, secret: SecretContext) -> np.ndarray:
    """The plaintext of an encrypted sum, rounded for release (see :func:`privacy.he.round_for_release`)."""
    values = secret.decrypt(payload.chunks, payload.num_values)
    return round_for_release(values, secret.params, payload.num_summed)
