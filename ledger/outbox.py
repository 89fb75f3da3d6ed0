"""Round records (and key statements) waiting for the chain, in a SQLite file: written (committed) before sending,
removed once mined.

When the ledger node is down, a round's record stays in ``outbox.sqlite`` and training goes on (up to a limit
the caller enforces); the next round, the end of the run, a restart or ``fedproof ledger flush`` sends what
is pending, in order (a run's key statement goes before the rounds it decrypts). A record the chain already holds (sent, then the process died before removing it)
counts as sent: sending is idempotent. SQLite gives atomic, durable commits, so a crash at any point loses
no record and never leaves a half-written one.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from ledger.contract import LedgerContract, RoundRecord
from ledger.errors import LedgerUnavailable, RoundOutOfOrder
from ledger.key_statement import SignedKeyStatement

_HASHES = ("run_id", "parent_model_hash", "model_hash", "updates_merkle_root", "bundle_hash")


@dataclass(frozen=True)
class KeyRecord:
    """A run's key statement waiting for the chain (``recordKey``)."""

    run_id: bytes
    signed: SignedKeyStatement


def _encode(record: RoundRecord | KeyRecord) -> str:
    if isinstance(record, KeyRecord):
        return json.dumps({"kind": "key", "run_id": record.run_id.hex(),
                           "statement": record.signed.statement.to_bytes().hex(),
                           "signatures": record.signed.signatures_bytes().hex()}, sort_keys=True)
    doc = asdict(record)
    for key in _HASHES:
        doc[key] = doc[key].hex()
    return json.dumps(doc, sort_keys=True)


def _decode(text: str) -> RoundRecord | KeyRecord:
    doc = json.loads(text)
    if doc.get("kind") == "key":
        return KeyRecord(bytes.fromhex(doc["run_id"]), SignedKeyStatement.from_bytes(
            bytes.fromhex(doc["statement"]), bytes.fromhex(doc["signatures"])))
    for key in _HASHES:
        doc[key] = bytes.fromhex(doc[key])
    return RoundRecord(**doc)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "outbox.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, record TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS receipts (round INTEGER, tx_hash TEXT, block_number INTEGER, "
                       "block_hash TEXT, gas_used INTEGER)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def pending(self) -> list[RoundRecord | KeyRecord]:
        with closing(self._connect()) as db:
            return [_decode(text) for (text,) in db.execute("SELECT record FROM pending ORDER BY seq")]

    def push(self, record: RoundRecord | KeyRecord) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT INTO pending (record) VALUES (?)", (_encode(record),))

    def receipts(self) -> list[dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT round, tx_hash, block_number, block_hash, gas_used FROM receipts").fetchall()
        return [dict(zip(("round", "tx_hash", "block_number", "block_hash", "gas_used"), row)) for row in rows]

    def flush(self, contract: LedgerContract | None) -> int:
        """Send every pending record in order; return how many are still pending (0: all on chain)."""
        if contract is None:
            return len(self.pending())
        with closing(self._connect()) as db:
            while True:
                row = db.execute("SELECT seq, record FROM pending ORDER BY seq LIMIT 1").fetchone()
                if row is None:
                    return 0
                seq, record = row[0], _decode(row[1])
                try:
                    if isinstance(record, KeyRecord):
                        receipt = None if _key_recorded(contract, record) else contract.record_key(
                            record.run_id, record.signed)
                    else:
                        receipt = contract.record_round(record)
                except LedgerUnavailable:
                    return db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]
                except RoundOutOfOrder:
                    if not _already_recorded(contract, record):
                        raise
                    receipt = None
                with db:
                    if receipt is not None and isinstance(record, RoundRecord):
                        db.execute("INSERT INTO receipts VALUES (?, ?, ?, ?, ?)", (
                            record.round, receipt.tx_hash, receipt.block_number, receipt.block_hash,
                            receipt.gas_used))
                    db.execute("DELETE FROM pending WHERE seq = ?", (seq,))


def _already_recorded(contract: LedgerContract, record: RoundRecord) -> bool:
    found = contract.round_events(run_id=record.run_id, model_hash=record.model_hash)
    return any(event.as_record() == record for event in found)


def _key_recorded(contract: LedgerContract, record: KeyRecord) -> bool:
    """Sent before (then the process died before removing it): the contract takes a key twice, so look first."""
    statement, signatures = record.signed.statement.to_bytes(), record.signed.signatures_bytes()
    found = contract.key_events(record.run_id, key_id=record.signed.statement.sha256)
    return any((e.statement, e.signatures) == (statement, signatures) for e in found)
