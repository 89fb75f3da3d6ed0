"""A client signs what it sends: its update, and (as a threshold key holder) its key-ceremony steps, partial
decryptions and model co-signatures.

Its id and key come from the SuperNode's node config (``client-id``, ``signing-key``: a deployment) or, in
simulation, from its partition number and ``<key-set>/clients/<id>.pem``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from flwr.app import Context, RecordDict

from fedproof.core.config import RunConfig
from fedproof.base.errors import ConfigError
from fedproof.core.keys import KeySet
from fedproof.core.protocol import SignedEnvelope, payload_chunks
from fl_client.device import Device
from ledger.signing import NO_DP, UPDATE_TAG, SignedFields, SigningKey, payload_digest, scale_epsilon
from ledger.trust import LedgerTrust
from ledger.verification import AllowList, Domain


def client_id(context: Context) -> str:
    return Device.of(context).client_id


def on_device(context: Context) -> bool:
    """A device (a SuperNode started from a kit, which names its client id) rather than a simulated client."""
    return Device.of(context).on_device


def device_paths(config: RunConfig, context: Context) -> RunConfig:
    """A device reads no path the server names: its data, keys, allow-list and state come from its node config
    (``data-dir``, ``signing-key``, ``allow-list``, ``state-dir``: the kit), whatever the run's settings say. A
    simulated client (the operator's own) takes the run's."""
    device = Device.of(context)
    if not device.on_device:
        return config
    return config.with_overrides(data_dir=device.data_dir, key_set="")


def signing_key(config: RunConfig, context: Context) -> SigningKey:
    path = Device.of(context).signing_key
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
                epsilon: float | None, parent_model_hash: bytes) -> RecordDict:
    """Add the signature over ``content``'s payload (already in it) and the model it trained from to the reply."""
    where = domain(config, context)
    fields = SignedFields(
        chain_id=where.chain_id, contract=where.contract, run_id=where.run_id, round=server_round,
        client_id=client_id(context), payload_sha256=payload_digest(payload_chunks(content)),
        num_examples=num_examples, epsilon_scaled=scale_epsilon(epsilon), tag=UPDATE_TAG, genesis=where.genesis,
        parent_model_hash=parent_model_hash,
    )
    return SignedEnvelope(fields, signing_key(config, context).sign(fields)).put(content)


def sign_statement(content: RecordDict, chunks: list[bytes], tag: bytes, step: int, config: RunConfig,
                   context: Context, key: str = "signed") -> RecordDict:
    """Sign a statement other than an update (a key-ceremony step, a partial decryption, a model co-signature)
    over ``chunks``."""
    where = domain(config, context)
    fields = SignedFields(
        chain_id=where.chain_id, contract=where.contract, run_id=where.run_id, round=step,
        client_id=client_id(context), payload_sha256=payload_digest(chunks), num_examples=0, epsilon_scaled=NO_DP,
        tag=tag, genesis=where.genesis,
    )
    return SignedEnvelope(fields, signing_key(config, context).sign(fields)).put(content, key)


def allow_list(config: RunConfig, context: Context) -> AllowList:
    """The federation's registered clients and their public keys, from the device's own copy: the SuperNode's
    node config ``allow-list`` (a deployment's kit) or ``<key-set>/allowlist.json`` (a simulation)."""
    path = Device.of(context).allow_list
    if not path:
        if not config.key_set:
            raise ConfigError("this client has no allow-list to check its peers: start the SuperNode with "
                              "--node-config 'allow-list=/path/allowlist.json' (from `fedproof provision`)")
        path = KeySet(Path(config.key_set)).allowlist
    return AllowList.load(Path(str(path)).expanduser())  # read afresh: a revocation counts at once


def domain(config: RunConfig, context: Context) -> Domain:
    """Where this device's statements belong: the run's chain, genesis block and contract, which must be the
    ones the device pins (node config ``ledger-trust``: the kit's ``trust.json``); a device without a pin signs
    only for runs without a ledger. A simulated client (the operator's) takes the run's."""
    where = config.domain()
    path = Device.of(context).pin
    if not path and on_device(context) and (where.chain_id or any(where.contract)):
        raise ConfigError(f"the run records on chain {where.chain_id} (contract 0x{where.contract.hex()}) and this "
                          "device pins no ledger: it signs nothing for a ledger run without its kit's trust.json "
                          "(node config 'ledger-trust'; `fedproof client` passes the kit's own)")
    if path:
        pinned = LedgerTrust.load(Path(str(path)).expanduser())
        if (where.chain_id, where.genesis, where.contract) != (pinned.chain_id, pinned.genesis, pinned.contract):
            raise ConfigError(f"the server names chain {where.chain_id} (genesis {where.genesis.hex()[:12]}…, "
                              f"contract 0x{where.contract.hex()}); this device is pinned to chain "
                              f"{pinned.chain_id} (genesis {pinned.genesis.hex()[:12]}…, contract "
                              f"0x{pinned.contract.hex()}): it signs nothing for another ledger")
    return where
