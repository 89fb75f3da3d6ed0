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
from ledger.errors import LedgerError
from ledger.committee import Draw
from ledger.key_statement import SignedKeyStatement
from ledger.outbox import KeyRecord, Outbox
from ledger.signing import ZERO_HASH, run_id_hash
from ledger.verification import Domain

log = logging.getLogger(__name__)


def write_model(path: Path, arrays: ArrayRecord, run_id: str) -> bytes:
    """Write the global model as safetensors (no pickle); return the SHA-256 of the exact file bytes (the hash
    clients sign as their parent and co-sign as a round's result)."""
    data = model_bytes(arrays, run_id)
    write_atomically(path, data)  # a checkpoint survives a crash whole or not at all
    return hashlib.sha256(data).digest()


def round_record(bundle: RoundBundle) -> RoundRecord:
    """What goes on chain for a round: the bundle's hashes, its updates' Merkle root and count, the largest epsilon."""
    return RoundRecord(
        run_id=run_id_hash(bundle.run_id), round=bundle.round, parent_model_hash=bundle.parent_model_hash,
        model_hash=bundle.model_hash, updates_merkle_root=bundle.merkle_root, num_updates=len(bundle.updates),
        epsilon_max_scaled=bundle.epsilon_max_scaled, bundle_hash=bundle.sha256,
    )


class Lineage:
    def __init__(self, run_path: Path, config: RunConfig, contract: LedgerContract | None,
                 initial: ArrayRecord | None = None, sleep: Callable[[float], None] = time.sleep,
                 retry_seconds: float = 5.0, domain: Domain | None = None) -> None:
        """The lineage of a new run starting from ``initial``; with ``initial=None``, call :meth:`resume`.
        ``domain``: the chain the run's statements bind, as start-up found it (default: the one ``config`` names)."""
        self.config, self.contract = config, contract
        self.domain = domain or config.domain()
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

    def record_key(self, signed: SignedKeyStatement, draw: Draw | None = None) -> Path:
        """Record the run's key statement, as every holder signed it, on chain (through the outbox: before any
        round recorded after it) and in ``keys/<digest>.json`` (with the draw's transcript, for a committee);
        return that file. Recording it again is a no-op."""
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
               "signatures": signed.signatures_bytes().hex(),
               "committee": {"candidates": s.committee.candidates, "colluders": s.committee.colluders,
                             "draw": s.committee.draw, "seed": s.committee.seed.hex()}}
        if draw is not None:  # the transcript anyone can recompute the committee from (ledger.committee.Draw)
            doc["draw"] = {"number": draw.number, "candidates": list(draw.candidates),
                           "secrets": [x.hex() for x in draw.secrets], "signatures": [x.hex() for x in draw.signatures]}
        if self.contract is not None:
            self.outbox.push(KeyRecord(run_id_hash(self.config.run_id), signed))
        write_atomically(path, (json.dumps(doc, indent=2) + "\n").encode())
        if self.contract is not None:
            self.flush()
        return path

    def resume(self, like: ArrayRecord) -> tuple[int, ArrayRecord]:
        """After a crash: the last round whose bundle was written and that round's model, as an ArrayRecord in
        ``like``'s (the model's) key order. That round's record is sent first (from the outbox, or rebuilt from its
        bundle when the crash came before it was queued)."""
        done = [int(p.stem.split("-")[1]) for p in self.bundles.glob("round-*.json")]
        last = max(done, default=0)
        self.model_file = self.models / f"round-{last}.safetensors"
        data = self.model_file.read_bytes()
        self.parent = hashlib.sha256(data).digest()
        if last and RoundBundle.from_bytes((self.bundles / f"round-{last}.json").read_bytes()).model_hash != self.parent:
            raise LedgerError(f"cannot resume: {self.model_file} is not the model round {last} recorded")
        self.recorded = len(done)
        if last and self.contract is not None:  # killed between writing the bundle and queueing its record
            record = round_record(RoundBundle.from_bytes((self.bundles / f"round-{last}.json").read_bytes()))
            if record not in self.outbox.pending():
                self.outbox.push(record)  # sending is idempotent: a record the chain holds counts as sent
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
        common = (self.config.run_id, result.round, self.domain.chain_id, self.domain.contract, self.parent)
        genesis = self.domain.genesis
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
        self.outbox.push(round_record(bundle))
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
