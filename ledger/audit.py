"""Audit queries over the ledger: a model's lineage, a client's contributions, one round, and full verification.

Everything here trusts event logs (``RoundRecorded``, ``ClientRegistered``, ``ClientRevoked``) and the
off-chain bundles whose hashes those logs hold, never the contract's mutable storage (a devnet can rewrite
storage without a new block). :func:`verify_model` raises :class:`AuditFailure` naming the first thing that
does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ledger.bundle import BundleError, RoundBundle, find_bundle
from ledger.contract import LedgerContract, RecordedRound
from ledger.errors import LedgerError, MerkleProofError, UpdateVerificationError
from ledger.merkle import MerkleTree, verify_proof
from ledger.signing import NO_DP, EPSILON_SCALE, client_id_hash, run_id_hash, verify_signature

_MAX_MODEL_FILE = 4 << 30


class AuditFailure(LedgerError):
    """What an auditor was asked to check does not hold; the message names the first failure."""


class ModelNotRecorded(AuditFailure):
    """No round on this ledger produced a model with this hash."""


def model_hash(source: str | Path) -> bytes:
    """A model's hash from a 64-hex-digit string or from the model file itself."""
    text = str(source)
    if len(text) in (64, 66) and not Path(text).exists():
        try:
            return bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            pass
    path = Path(text)
    if not path.is_file():
        raise AuditFailure(f"{text}: neither a model file nor a 32-byte hex hash")
    if path.stat().st_size > _MAX_MODEL_FILE:
        raise AuditFailure(f"{path}: too large to be a model file")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.digest()


def lineage(contract: LedgerContract, model: bytes) -> list[RecordedRound]:
    """The rounds that led to ``model``, newest first, back to the initial model (whose hash is the last
    entry's parent). Rounds that left the model unchanged are skipped: they did not produce it."""
    steps: list[RecordedRound] = []
    run_events: dict[bytes, dict[bytes, RecordedRound]] = {}
    current = model
    while True:
        producer = _producer(contract, current, run_events)
        if producer is None:
            break
        steps.append(producer)
        current = producer.parent_model_hash
        if len(steps) > 1_000_000:
            raise AuditFailure("lineage does not end: a cycle of model hashes")
    if not steps:
        raise ModelNotRecorded(f"no round on this ledger produced model {model.hex()}")
    return steps


def _producer(contract: LedgerContract, model: bytes, cache: dict[bytes, dict[bytes, RecordedRound]]
              ) -> RecordedRound | None:
    """The first round that produced ``model``: looked up in runs already fetched, else by its indexed hash
    (and then that whole run is fetched in one query, so walking a long run costs one query, not one each)."""
    for by_model in cache.values():
        if model in by_model:
            return by_model[model]
    hits = [e for e in contract.round_events(model_hash=model) if e.model_hash != e.parent_model_hash]
    if not hits:
        return None
    run = hits[0].run_id
    by_model: dict[bytes, RecordedRound] = {}
    for event in contract.round_events(run_id=run):
        if event.model_hash != event.parent_model_hash:
            by_model.setdefault(event.model_hash, event)
    cache[run] = by_model
    return by_model.get(model, hits[0])


def deployment_of(contract: LedgerContract, artifact: bytes):
    """The latest ``DeploymentRecorded`` of a deployed artifact, or None if ``artifact`` was never deployed."""
    found = contract.deployment_events(artifact_hash=artifact)
    return found[-1] if found else None


@dataclass(frozen=True)
class Contribution:
    run_id: str
    round: int
    num_examples: int
    epsilon: float | None
    """Cumulative epsilon the client had spent after this round, as it signed it (None without DP)."""
    model_hash: bytes


def client_contributions(contract: LedgerContract, client_id: str, bundle_dirs: Sequence[Path]
                         ) -> list[Contribution]:
    """Every recorded round (with a bundle at hand that matches the chain) that holds an update of ``client_id``."""
    out = []
    for event in contract.round_events():
        try:
            bundle = find_bundle(list(bundle_dirs), event.bundle_hash)
        except BundleError:
            continue
        for update in bundle.updates:
            if update.fields.client_id == client_id:
                eps = update.fields.epsilon_scaled
                out.append(Contribution(bundle.run_id, bundle.round, update.fields.num_examples,
                                        None if eps == NO_DP else eps / EPSILON_SCALE, event.model_hash))
    return out


def round_record(contract: LedgerContract, run_id: str, server_round: int) -> RecordedRound:
    for event in contract.round_events(run_id=run_id_hash(run_id)):
        if event.round == server_round:
            return event
    raise AuditFailure(f"round {server_round} of run {run_id!r} is not on this ledger")


@dataclass(frozen=True)
class Verified:
    model_hash: bytes
    rounds: list[tuple[RecordedRound, RoundBundle]]
    """Newest first."""

    @property
    def updates(self) -> int:
        return sum(len(bundle.updates) for _, bundle in self.rounds)


def verify_model(contract: LedgerContract, source: str | Path, bundle_dirs: Sequence[Path]) -> Verified:
    """Prove a model file's whole history from the ledger and the bundles, or raise :class:`AuditFailure`."""
    digest = model_hash(source)
    steps = lineage(contract, digest)
    keys = _registered_keys(contract)
    checked = []
    for event in steps:
        where = f"round {event.round} (block {event.block_number})"
        try:
            bundle = find_bundle(list(bundle_dirs), event.bundle_hash)
        except BundleError as exc:
            raise AuditFailure(f"{where}: its bundle is missing or altered: {exc}") from exc
        if (run_id_hash(bundle.run_id), bundle.round, bundle.parent_model_hash, bundle.model_hash) != (
                event.run_id, event.round, event.parent_model_hash, event.model_hash):
            raise AuditFailure(f"{where}: the bundle describes another round than the chain recorded")
        if len(bundle.updates) != event.num_updates or bundle.epsilon_max_scaled != event.epsilon_max_scaled:
            raise AuditFailure(f"{where}: update count or epsilon in the bundle differ from the chain")
        tree = MerkleTree([u.leaf for u in bundle.updates])
        for update in bundle.updates:
            who = f"{where}, client {update.fields.client_id}"
            try:
                verify_proof(event.updates_merkle_root, update.leaf, tree.proof(update.leaf))
                verify_signature(update.public_key, update.fields, update.signature)
            except (MerkleProofError, UpdateVerificationError) as exc:
                raise AuditFailure(f"{who}: {exc}") from exc
            _check_registered(keys, update.fields.client_id, update.public_key, event.block_number, who)
        checked.append((event, bundle))
    return Verified(digest, checked)


def _registered_keys(contract: LedgerContract) -> dict[bytes, tuple[bytes, int, int | None]]:
    """client id hash -> (key, block registered, block revoked or None), from the event logs."""
    keys: dict[bytes, tuple[bytes, int, int | None]] = {}
    for event in contract.client_events():
        if event.kind == "registered" and event.public_key is not None:
            keys[event.client_id] = (event.public_key, event.block_number, None)
        elif event.kind == "revoked" and event.client_id in keys:
            key, registered, _ = keys[event.client_id]
            keys[event.client_id] = (key, registered, event.block_number)
    return keys


def _check_registered(keys: dict[bytes, tuple[bytes, int, int | None]], client_id: str, public_key: bytes,
                      block: int, who: str) -> None:
    entry = keys.get(client_id_hash(client_id))
    if entry is None:
        raise AuditFailure(f"{who}: the client was never registered on chain")
    key, registered, revoked = entry
    if key != public_key:
        raise AuditFailure(f"{who}: signed with a key other than the one registered on chain")
    if registered > block or (revoked is not None and revoked <= block):
        raise AuditFailure(f"{who}: the client was not registered (or already revoked) at that block")
