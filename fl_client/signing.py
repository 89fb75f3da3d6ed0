"""A client signs what it sends: its update (and, on a decryption committee, the sum it decrypted).

Its id and key come from the SuperNode's node config (``client-id``, ``signing-key``: a deployment) or, in
simulation, from its partition number and ``<key-set>/clients/<id>.pem``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context, RecordDict

from fedproof.config import RunConfig
from fedproof.errors import ConfigError
from fedproof.keys import KeySet
from fedproof.protocol import SignedEnvelope, payload_chunks
from ledger.signing import DECRYPT_TAG, NO_DP, UPDATE_TAG, SignedFields, SigningKey, payload_digest, scale_epsilon
from ledger.verification import AllowList, Domain


def client_id(context: Context) -> str:
    given = context.node_config.get("client-id")
    return str(given) if given is not None else str(context.node_config.get("partition-id", ""))


def signing_key(config: RunConfig, context: Context) -> SigningKey:
    path = context.node_config.get("signing-key")
    if not path:
        if not config.key_set:
            raise ConfigError("this client has no signing key: start the SuperNode with --node-config "
                              "'signing-key=/path/<id>.pem client-id=<id>' (from `fedproof keys init`)")
        path = KeySet(Path(config.key_set)).signing_key(client_id(context))
    return _load(str(Path(str(path)).expanduser().resolve()))


@lru_cache(maxsize=4)
def _load(path: str) -> SigningKey:
    return SigningKey.load(Path(path))


def sign_update(content: RecordDict, config: RunConfig, context: Context, server_round: int, num_examples: int,
                epsilon: float | None) -> RecordDict:
    """Add the signature over ``content``'s payload (already in it) to the reply."""
    fields = SignedFields(
        chain_id=config.chain_id, contract=config.contract_bytes(), run_id=config.run_id, round=server_round,
        client_id=client_id(context), payload_sha256=payload_digest(payload_chunks(content)),
        num_examples=num_examples, epsilon_scaled=scale_epsilon(epsilon), tag=UPDATE_TAG,
    )
    return SignedEnvelope(fields, signing_key(config, context).sign(fields)).put(content)


def sign_decryption(content: RecordDict, values: bytes, config: RunConfig, context: Context,
                    server_round: int) -> RecordDict:
    fields = SignedFields(
        chain_id=config.chain_id, contract=config.contract_bytes(), run_id=config.run_id, round=server_round,
        client_id=client_id(context), payload_sha256=payload_digest([values]), num_examples=0,
        epsilon_scaled=NO_DP, tag=DECRYPT_TAG,
    )
    return SignedEnvelope(fields, signing_key(config, context).sign(fields)).put(content)


def sign_statement(content: RecordDict, chunks: list[bytes], tag: bytes, step: int, config: RunConfig,
                   context: Context, key: str = "signed") -> RecordDict:
    """Sign a statement other than an update (a key-ceremony step, a partial decryption) over ``chunks``."""
    fields = SignedFields(
        chain_id=config.chain_id, contract=config.contract_bytes(), run_id=config.run_id, round=step,
        client_id=client_id(context), payload_sha256=payload_digest(chunks), num_examples=0, epsilon_scaled=NO_DP,
        tag=tag,
    )
    return SignedEnvelope(fields, signing_key(config, context).sign(fields)).put(content, key)


def allow_list(config: RunConfig, context: Context) -> AllowList:
    """The federation's registered clients and their public keys, from the device's own copy: the SuperNode's
    node config ``allow-list`` (a deployment's kit) or ``<key-set>/allowlist.json`` (a simulation)."""
    path = context.node_config.get("allow-list")
    if not path:
        if not config.key_set:
            raise ConfigError("this client has no allow-list to check its peers: start the SuperNode with "
                              "--node-config 'allow-list=/path/allowlist.json' (from `fedproof provision`)")
        path = KeySet(Path(config.key_set)).allowlist
    return AllowList.load(Path(str(path)).expanduser())  # read afresh: a revocation counts at once


def domain(config: RunConfig) -> Domain:
    return Domain(config.chain_id, config.contract_bytes(), config.run_id)
