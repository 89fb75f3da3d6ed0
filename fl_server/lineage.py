"""Each round's lineage: the model file, the off-chain bundle of signed updates, and the on-chain record.

Per round: the new global model is written as ``models/round-<n>.safetensors`` (its SHA-256 is the model
hash), the admitted updates and the reasons for every rejection go into ``ledger/round-<n>.json`` (the
bundle), and ``recordRound`` puts the parent and model hashes, the Merkle root of the updates, their count,
the largest epsilon and the bundle's hash on chain, through an on-disk outbox so that a ledger node that is
down delays the record without losing it. A round that left the model unchanged is recorded too (model hash =
parent hash, no updates, the reason in its bundle): nothing is dropped silently.

A run under threshold HE also records its key statement (:meth:`Lineage.record_key`), signed by every key holder,
before its first round: auditors and devices take t and the holders from there (``keys/<digest>.json`` in the run
directory keeps a copy for offline reading), never from the bundles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Array, ArrayRecord
from safetensors.numpy import load as safetensors_load

from fedproof.core.config import RunConfig
from fedproof.base.files import write_atomically
from fedproof.core.weights import model_bytes
from fedproof.core.protocol import TRAIN
from fl_server.round import RoundResult
from ledger.bundle import RoundBundle
from ledger.contract import LedgerContract, RoundRecord
from ledger.defaults import DEFAULT_DATA_DIR
from ledger.devnet import Devnet, ensure_contract
from ledger.errors import LedgerError
from ledger.key_statement import SignedKeyStatement
from ledger.outbox import KeyRecord, Outbox
from ledger.signing import ZERO_HASH, client_id_hash, run_id_hash
from ledger.verification import AllowList

log = logging.getLogger(__name__)


def open_ledger(config: RunConfig, allow: AllowList) -> tuple[RunConfig, LedgerContract | None]:
    """Connect to the ledger (starting the local devnet if no URL is given), find or deploy the contract, and
    register the allow-listed clients; return the config with the chain and contract filled in."""
    if not config.ledger:
        return config, None
    data_dir = Path(config.devnet_dir or DEFAULT_DATA_DIR).expanduser()
    url = config.ledger_url or Devnet(data_dir, port=config.devnet_port or None).start().url
    w3 = LedgerContract.connect(url)
    sender = None
    if config.ledger_operator:  # the operator's own key, decrypted here; the node holds none
        from ledger.operator import OperatorKeys, read_password, use_account

        keys = OperatorKeys(Path(config.ledger_operator))
        password = read_password(Path(config.ledger_password_file) if config.ledger_password_file else None)
        sender = use_account(w3, keys.ledger_account(password))
    contract = (LedgerContract.at(w3, config.ledger_contract, sender=sender) if config.ledger_contract
                else ensure_contract(w3, data_dir, sender=sender))
    register_clients(contract, allow)
    return config.with_overrides(chain_id=contract.chain_id, ledger_contract=contract.address,
                                 chain_genesis="0x" + contract.genesis.hex()), contract


def register_clients(contract: LedgerContract, allow: AllowList) -> None:
    for client_id, key in sorted(allow.keys.items()):
        on_chain = contract.client_key(client_id_hash(client_id))
        if on_chain is None:
            contract.register_client(client_id_hash(client_id), key)
        elif on_chain != key:
            raise LedgerError(f"client {client_id!r} is registered on chain with another key; use a new client id "
                              "or the key set it was registered with")
        if client_id in allow.revoked and contract.is_active_client(client_id_hash(client_id)):
            contract.revoke_client(client_id_hash(client_id))


def write_model(path: Path, arrays: ArrayRecord, run_id: str) -> bytes:
    """Write the global model as safetensors (no pickle); return the SHA-256 of the exact file bytes (the hash
    clients sign as their parent and co-sign as a round's result)."""
    data = model_bytes(arrays, run_id)
    write_atomically(path, data)  # a checkpoint survives a crash whole or not at all
    return hashlib.sha256(data).digest()


class Lineage:
    def __init__(self, run_path: Path, config: RunConfig, contract: LedgerContract | None,
                 initial: ArrayRecord | None = None, sleep: Callable[[float], None] = time.sleep,
                 retry_seconds: float = 5.0) -> None:
        """The lineage of a new run starting from ``initial``; with ``initial=None``, call :meth:`resume`."""
        self.config, self.contract = config, contract
        self.sleep, self.retry_seconds = sleep, retry_seconds
        self.run_path, self.models, self.bundles = run_path, run_path / "models", run_path / "ledger"
        self.outbox = Outbox(self.bundles)
        self.last_bundle_sha256 = ""
        self.recorded = 0
        self.model_file = self.models / "round-0.safetensors"
        if initial is not None:
            self.parent = write_model(self.model_file, initial, config.run_id)
            if contract is not None:  # the lineage starts at a registered model, not at whatever a record names
                contract.start_run(run_id_hash(config.run_id), self.parent)

    def record_key(self, signed: SignedKeyStatement) -> Path:
        """Record the run's key statement, as every holder signed it, on chain (through the outbox: before any
        round recorded after it) and in ``keys/<digest>.json``; return that file. Recording it again is a no-op."""
        if not isinstance(signed, SignedKeyStatement):
            raise LedgerError(f"a key statement must be a SignedKeyStatement, got {type(signed).__name__}")
        s = signed.statement
        if set(signed.signatures) != set(s.holders):
            raise LedgerError("the key statement is not signed by exactly its holders")
        path = self.run_path / "keys" / f"{s.sha256.hex()}.json"
        if path.is_file():
            return path
        doc = {"version": 1, "run_id": self.config.run_id, "key_sha256": s.sha256.hex(), "threshold": s.threshold,
               "holders": list(s.holders), "weight_scale": s.weight_scale, "first_round": s.first_round,
               "public_key_sha256": s.public_key_sha256.hex(), "statement": s.to_bytes().hex(),
               "signatures": signed.signatures_bytes().hex()}
        if self.contract is not None:
            self.outbox.push(KeyRecord(run_id_hash(self.config.run_id), signed))
        write_atomically(path, (json.dumps(doc, indent=2) + "\n").encode())
        if self.contract is not None:
            self.flush()
        return path

    def resume(self, like: ArrayRecord) -> tuple[int, ArrayRecord]:
        """After a crash: the last round whose bundle was written (its record is on chain or in the outbox,
        flushed first) and that round's model, as an ArrayRecord in ``like``'s (the model's) key order."""
        done = [int(p.stem.split("-")[1]) for p in self.bundles.glob("round-*.json")]
        last = max(done, default=0)
        self.model_file = self.models / f"round-{last}.safetensors"
        data = self.model_file.read_bytes()
        self.parent = hashlib.sha256(data).digest()
        if last and RoundBundle.from_bytes((self.bundles / f"round-{last}.json").read_bytes()).model_hash != self.parent:
            raise LedgerError(f"cannot resume: {self.model_file} is not the model round {last} recorded")
        self.recorded = len(done)
        self.flush()
        tensors = safetensors_load(data)
        if set(tensors) != set(like.keys()):
            raise LedgerError(f"cannot resume: {self.model_file} does not hold this run's model")
        return last, ArrayRecord({k: Array(tensors[k]) for k in like.keys()})

    @property
    def model_hash(self) -> str:
        """SHA-256 (hex) of the current global model's file."""
        return self.parent.hex()

    def record(self, result: RoundResult) -> None:
        """Write the round's model file and bundle, and send its record: the new model with its admitted
        updates, or (no new model) the parent again with the failure reason. Every set-aside reply is listed."""
        rejected = tuple(str(r) if r.phase == TRAIN else f"{r.phase} {r}" for r in result.rejections) + tuple(
            f"declined: client {d.client_id}: {d.status}: {d.reason}" for d in result.declines)
        common = (self.config.run_id, result.round, self.config.chain_id, self.config.contract_bytes(), self.parent)
        genesis = self.config.genesis_bytes()
        if result.model is None:
            self._record(RoundBundle(*common, self.parent, rejected=rejected, failed=result.failure, genesis=genesis))
            return
        path = self.models / f"round-{result.round}.safetensors"
        digest = write_model(path, result.model, self.config.run_id)
        e = result.endorsement
        self._record(RoundBundle(*common, digest, result.leaves, rejected, genesis=genesis,
                                 threshold=e.threshold if e else 0, holders=e.holders if e else 0,
                                 cosignatures=e.cosignatures if e else (),
                                 key_sha256=e.key_sha256 if e else ZERO_HASH))
        self.parent, self.model_file = digest, path

    def _record(self, bundle: RoundBundle) -> None:
        write_atomically(self.bundles / bundle.file_name, bundle.to_bytes())  # whole or not at all
        self.recorded += 1
        self.last_bundle_sha256 = bundle.sha256.hex()
        if self.contract is None:
            return
        self.outbox.push(RoundRecord(
            run_id=run_id_hash(bundle.run_id), round=bundle.round, parent_model_hash=bundle.parent_model_hash,
            model_hash=bundle.model_hash, updates_merkle_root=bundle.merkle_root, num_updates=len(bundle.updates),
            epsilon_max_scaled=bundle.epsilon_max_scaled, bundle_hash=bundle.sha256,
        ))
        self.flush()

    def flush(self) -> int:
        """Send what is pending (round records, key statements); past ``max-unrecorded-rounds`` unsent records, wait (retrying) for the ledger."""
        pending = self.outbox.flush(self.contract)
        while pending > self.config.max_unrecorded_rounds:
            log.warning("ledger unreachable: %d round record(s) unsent, more than max-unrecorded-rounds=%d: training "
                        "is paused until the ledger answers again (retrying every %g s; `fedproof devnet start`)",
                        pending, self.config.max_unrecorded_rounds, self.retry_seconds)
            self.sleep(self.retry_seconds)
            pending = self.outbox.flush(self.contract)
        if pending:
            log.warning("ledger unreachable: %d round record(s) kept in %s, sent when it is back "
                        "(or `fedproof ledger flush`)", pending, self.outbox.path)
        return pending

    def final_model(self, destination: Path) -> None:
        """The run's model file is the last recorded model, byte for byte, so its hash is on the ledger."""
        shutil.copyfile(self.model_file, destination)
