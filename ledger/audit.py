"""Audit queries over the ledger: a model's lineage, a client's contributions, one round, and full verification.

Everything here trusts event logs (``RoundRecorded``, ``ClientRegistered``, ``ClientRevoked``, ``KeyRecorded``)
and the off-chain bundles whose hashes those logs hold, never the contract's mutable storage (a devnet can rewrite
storage without a new block). A run's threshold t and key holders come from its key statement on chain, signed by
every holder, never from the server's bundles. :func:`verify_model` raises :class:`AuditFailure` naming the first
thing that does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger.bundle import BundleError, RoundBundle, find_bundle
from ledger.contract import LedgerContract, RecordedKey, RecordedRound
from ledger.errors import LedgerError, MerkleProofError, UpdateVerificationError
from ledger.key_statement import KeyStatementError
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
        raise ModelNotRecorded(f"no round on this ledger produced model {model.hex()}{_which(contract)}")
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
    """The rounds that changed the model on its way, newest first."""
    keys: dict[tuple[bytes, int], RecordedKey] = field(default_factory=dict)
    """(run id hash, round) -> the key statement on chain those co-signers decrypted under (co-signed rounds)."""

    @property
    def updates(self) -> int:
        return sum(len(bundle.updates) for _, bundle in self.rounds)


def verify_model(contract: LedgerContract, source: str | Path, bundle_dirs: Sequence[Path], *,
                 min_cosigners: int = 2, trust_server: bool = False) -> Verified:
    """Prove a model file's whole history from the ledger and the bundles, or raise :class:`AuditFailure`.

    What an auditor trusts: the chain it asks (pinned by genesis hash and contract address, see
    :func:`check_pinned`) and the client keys registered on it. Not the server: every round that changed the model
    must carry at least t co-signatures (and >= ``min_cosigners``) of holders of the run's key in force, registered
    and not revoked at that block, each vouching that it recomputed this model from the parent and the round's
    signed leaves. t and the holders come from the run's key statement on chain (:func:`keys_in_force`), signed by
    every holder it names, held by a majority of the clients registered then, t a majority of its holders. Every
    round of each run on the way is checked in order, from the run's registered initial model: a round whose parent
    is not the previous round's model, a round without updates that changes the model, or a signature bound to
    another chain, contract, run or round fails the audit, naming the round.
    ``trust_server`` accepts rounds without co-signatures of runs without threshold HE (no key statement on chain),
    and says so."""
    digest = model_hash(source)
    keys = _registered_keys(contract)
    checked: list[tuple[RecordedRound, RoundBundle]] = []
    used: dict[tuple[bytes, int], RecordedKey] = {}
    current, runs = digest, set()
    while (producer := _first_producer(contract, current)) is not None:
        if producer.run_id in runs:
            raise AuditFailure("lineage does not end: a cycle of model hashes")
        runs.add(producer.run_id)
        current = _verify_run(contract, producer, list(bundle_dirs), keys, min_cosigners, trust_server, checked, used)
    if not checked:
        raise ModelNotRecorded(f"no round on this ledger produced model {digest.hex()}{_which(contract)}")
    return Verified(digest, checked, used)


def _which(contract: LedgerContract) -> str:
    """Which ledger was asked, for an answer that could be the wrong ledger's."""
    return (f" (asked contract {contract.address} on chain {contract.chain_id} at {contract._url}; if the run "
            "recorded elsewhere, name its ledger: --pin <its trust.json>, or --ledger-url and --contract)")


def check_pinned(contract: LedgerContract, trust) -> None:
    """Refuse a node that is not on the pinned chain (id and genesis block) or a contract that is not the pinned one."""
    if (contract.chain_id, contract.genesis) != (trust.chain_id, trust.genesis):
        raise AuditFailure(f"wrong ledger: the node serves chain {contract.chain_id} with genesis "
                           f"{contract.genesis.hex()[:16]}…; the pin is chain {trust.chain_id}, genesis "
                           f"{trust.genesis.hex()[:16]}… (ask the pin's own RPC endpoint: drop --ledger-url)")
    if bytes.fromhex(contract.address[2:]) != trust.contract:
        raise AuditFailure(f"wrong ledger: contract {contract.address} is not the pinned {trust.contract_address} "
                           "(drop --contract)")


def _first_producer(contract: LedgerContract, model: bytes) -> RecordedRound | None:
    hits = [e for e in contract.round_events(model_hash=model) if e.model_hash != e.parent_model_hash]
    return hits[0] if hits else None


def _verify_run(contract: LedgerContract, producer: RecordedRound, bundle_dirs: list[Path],
                keys: dict[bytes, tuple[bytes, int, int | None]], min_cosigners: int, trust_server: bool,
                checked: list[tuple[RecordedRound, RoundBundle]], used: dict[tuple[bytes, int], RecordedKey]
                ) -> bytes:
    """Check rounds 1..producer.round of the producer's run; return the run's initial model."""
    starts = contract.run_starts(run_id=producer.run_id)
    if not starts:
        raise AuditFailure(f"run 0x{producer.run_id.hex()[:16]}…: its initial model was never registered (startRun): "
                           "its lineage could begin anywhere")
    initial = starts[0][1]
    events = [e for e in contract.round_events(run_id=producer.run_id) if e.round <= producer.round]
    previous, verified, run_keys = initial, [], None
    for expected, event in enumerate(events, start=1):
        where = f"round {event.round} (block {event.block_number})"
        if event.round != expected:
            raise AuditFailure(f"{where}: the run's rounds are not recorded once each, in order (expected {expected})")
        if event.parent_model_hash != previous:
            raise AuditFailure(f"{where}: its parent is not the previous round's model (or the run's initial model)")
        bundle = _bundle(event, bundle_dirs, where)
        _check_domain(contract, bundle, where)
        _check_leaves(event, bundle, keys, where)
        if event.model_hash != event.parent_model_hash:
            if not bundle.updates:
                raise AuditFailure(f"{where}: a round with no updates changed the model")
            if run_keys is None:  # the run's name is the bundle's, checked to hash to the run id on chain
                run_keys = keys_in_force(contract, bundle.run_id, keys)
            key = _check_cosignatures(bundle, run_keys, keys, event, where, min_cosigners, trust_server)
            if key is not None:
                used[(event.run_id, event.round)] = key
            verified.append((event, bundle))
        previous = event.model_hash
    if len(events) != producer.round:
        raise AuditFailure(f"round {producer.round}: earlier rounds of its run are missing from the chain")
    checked.extend(reversed(verified))
    return initial


def _bundle(event: RecordedRound, bundle_dirs: list[Path], where: str) -> RoundBundle:
    try:
        bundle = find_bundle(bundle_dirs, event.bundle_hash)
    except BundleError as exc:
        raise AuditFailure(f"{where}: its bundle is missing or altered: {exc}") from exc
    if (run_id_hash(bundle.run_id), bundle.round, bundle.parent_model_hash, bundle.model_hash) != (
            event.run_id, event.round, event.parent_model_hash, event.model_hash):
        raise AuditFailure(f"{where}: the bundle describes another round than the chain recorded")
    if len(bundle.updates) != event.num_updates or bundle.epsilon_max_scaled != event.epsilon_max_scaled:
        raise AuditFailure(f"{where}: update count or epsilon in the bundle differ from the chain")
    return bundle


def _check_domain(contract: LedgerContract, bundle: RoundBundle, where: str) -> None:
    """Signatures in the bundle are bound to this chain (id and genesis block) and this contract."""
    if (bundle.chain_id, bundle.genesis, bundle.contract) != (contract.chain_id, contract.genesis,
                                                              bytes.fromhex(contract.address[2:])):
        raise AuditFailure(f"{where}: its signatures are bound to another chain, devnet (genesis "
                           f"{bundle.genesis.hex()[:12]}…) or contract than this one")


def _check_leaves(event: RecordedRound, bundle: RoundBundle, keys: dict[bytes, tuple[bytes, int, int | None]],
                  where: str) -> None:
    tree = MerkleTree([u.leaf for u in bundle.updates])
    for update in bundle.updates:
        who = f"{where}, client {update.fields.client_id}"
        try:
            verify_proof(event.updates_merkle_root, update.leaf, tree.proof(update.leaf))
            verify_signature(update.public_key, update.fields, update.signature)
        except (MerkleProofError, UpdateVerificationError) as exc:
            raise AuditFailure(f"{who}: {exc}") from exc
        _check_registered(keys, update.fields.client_id, update.public_key, event.block_number, who)


@dataclass(frozen=True)
class RunKeys:
    """A run's ``KeyRecorded`` events, each checked against the client keys registered on chain at its block."""

    run_id: str
    events: list[RecordedKey]
    refused: dict[int, str]
    """Index in ``events`` -> why that statement is not a valid key of this run (unparsable, a signature missing
    or wrong, held by too few of the registered clients, t below a majority of its holders)."""

    def in_force(self, server_round: int, block: int) -> RecordedKey | None:
        """The latest valid statement recorded at or before ``block`` whose key decrypts ``server_round``."""
        found = None
        for i, event in enumerate(self.events):
            if event.block_number > block:
                break
            if i not in self.refused and event.signed is not None and event.signed.statement.first_round <= server_round:
                found = event
        return found

    def recorded_by(self, block: int) -> list[tuple[int, RecordedKey]]:
        return [(i, e) for i, e in enumerate(self.events) if e.block_number <= block]

    def why_refused(self, key_sha256: bytes, block: int) -> str | None:
        for i, event in self.recorded_by(block):
            if event.key_id == key_sha256 and i in self.refused:
                return self.refused[i]
        return None


def keys_in_force(contract: LedgerContract, run_id: str,
                  client_keys: dict[bytes, tuple[bytes, int, int | None]] | None = None) -> RunKeys:
    """Every key statement recorded for ``run_id``, each verified (:meth:`SignedKeyStatement.verify`) with the keys
    of the clients registered and not revoked at its block, ``registered`` = how many those were."""
    client_keys = _registered_keys(contract) if client_keys is None else client_keys
    chain_id, genesis, address = contract.domain
    events = contract.key_events(run_id_hash(run_id))
    refused: dict[int, str] = {}
    for i, event in enumerate(events):
        if event.signed is None:
            refused[i] = f"not a key statement: {event.error}"
            continue
        block = event.block_number
        active = {cid: key for cid, (key, registered, revoked) in client_keys.items()
                  if registered <= block and (revoked is None or revoked > block)}
        holders = {h: active[client_id_hash(h)] for h in event.signed.statement.holders
                   if client_id_hash(h) in active}
        try:
            event.signed.verify(holders, chain_id, address, genesis, run_id, len(active))
        except KeyStatementError as exc:
            refused[i] = str(exc)
    return RunKeys(run_id, events, refused)


def _key_name(event: RecordedKey) -> str:
    s = event.signed.statement if event.signed is not None else None
    what = f"{s.threshold}-of-{len(s.holders)} " if s is not None else ""
    return f"{what}key 0x{event.key_id.hex()[:16]}… (block {event.block_number})"


def _check_cosignatures(bundle: RoundBundle, run_keys: RunKeys, keys: dict[bytes, tuple[bytes, int, int | None]],
                        event: RecordedRound, where: str, min_cosigners: int, trust_server: bool
                        ) -> RecordedKey | None:
    """The round's co-signatures against the run's key in force on chain; return that key (None: trusted server)."""
    block = event.block_number
    key = run_keys.in_force(bundle.round, block)
    if not bundle.cosignatures:
        if not run_keys.recorded_by(block):
            if trust_server:
                return None
            raise AuditFailure(f"{where}: no client co-signed this model: only the server vouches for it (a run "
                               "without threshold HE; pass trust_server / --trust-server to accept that)")
        raise AuditFailure(f"{where}: no client co-signed this model, yet the run has a key statement on chain: its "
                           "holders decrypt every sum (refused even when trusting the server)")
    if key is None:
        refused = "; ".join(f"{_key_name(e)} refused: {run_keys.refused[i]}" if i in run_keys.refused else
                            f"{_key_name(e)} decrypts from round {e.signed.statement.first_round} on"  # type: ignore[union-attr]
                            for i, e in run_keys.recorded_by(block))
        raise AuditFailure(f"{where}: no key statement on chain for run {run_keys.run_id!r} in force at this round: "
                           "nothing says which t of which holders may vouch for it" + (f" ({refused})" if refused else ""))
    statement = key.signed.statement  # type: ignore[union-attr]
    if bundle.key_sha256 != key.key_id:
        why = run_keys.why_refused(bundle.key_sha256, block)
        named = f"key 0x{bundle.key_sha256.hex()[:16]}…"
        raise AuditFailure(f"{where}: the co-signers name {named}, " + (
            f"which the chain refuses: {why}" if why is not None else
            f"not the run's key in force on chain ({_key_name(key)})"))
    holders = set(statement.holders)
    signers = set()
    for c in bundle.cosignatures:
        who = f"{where}, co-signer {c.client_id}"
        if c.client_id in signers:
            raise AuditFailure(f"{who}: co-signed twice")
        if c.client_id not in holders:
            raise AuditFailure(f"{who}: not a holder of the run's {_key_name(key)}")
        try:
            verify_signature(c.public_key, bundle.statement(c.client_id), c.signature)
        except UpdateVerificationError as exc:
            raise AuditFailure(f"{who}: the co-signature does not match this round's model statement: {exc}") from exc
        _check_registered(keys, c.client_id, c.public_key, block, who)
        signers.add(c.client_id)
    needed = max(statement.threshold, min_cosigners)
    if len(signers) < needed:
        raise AuditFailure(f"{where}: {len(signers)} client co-signature(s) of the new model; at least {needed} "
                           f"are required (the run's {_key_name(key)} on chain)")
    return key


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
