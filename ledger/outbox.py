"""Round records waiting for the chain: written to disk before they are sent, removed once mined.

When the ledger node is down, a round's record stays in ``outbox.jsonl`` and training goes on; the next
round, the end of the run or ``fedproof ledger flush`` sends what is pending, in order. A record the
chain already holds (sent, then the process died before removing it) counts as sent: sending is
idempotent.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ledger.contract import LedgerContract, Receipt, RoundRecord
from ledger.errors import LedgerUnavailable, RoundOutOfOrder

_HASHES = ("run_id", "parent_model_hash", "model_hash", "updates_merkle_root", "bundle_hash")


def _encode(record: RoundRecord) -> str:
    doc = asdict(record)
    for key in _HASHES:
        doc[key] = doc[key].hex()
    return json.dumps(doc, sort_keys=True)


def _decode(line: str) -> RoundRecord:
    doc = json.loads(line)
    for key in _HASHES:
        doc[key] = bytes.fromhex(doc[key])
    return RoundRecord(**doc)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "outbox.jsonl"
        self.receipts = Path(directory) / "receipts.jsonl"

    def pending(self) -> list[RoundRecord]:
        if not self.path.is_file():
            return []
        return [_decode(line) for line in self.path.read_text().splitlines() if line.strip()]

    def push(self, record: RoundRecord) -> None:
        self._write([*self.pending(), record])

    def flush(self, contract: LedgerContract | None) -> int:
        """Send every pending record in order; return how many are still pending (0: all on chain)."""
        pending = self.pending()
        if contract is None:
            return len(pending)
        while pending:
            record = pending[0]
            try:
                receipt = contract.record_round(record)
            except LedgerUnavailable:
                break
            except RoundOutOfOrder:
                if not self._already_recorded(contract, record):
                    raise
                receipt = None
            if receipt is not None:
                self._log_receipt(record, receipt)
            pending = pending[1:]
            self._write(pending)
        return len(pending)

    @staticmethod
    def _already_recorded(contract: LedgerContract, record: RoundRecord) -> bool:
        found = contract.round_events(run_id=record.run_id, model_hash=record.model_hash)
        return any(event.as_record() == record for event in found)

    def _log_receipt(self, record: RoundRecord, receipt: Receipt) -> None:
        with open(self.receipts, "a") as fh:
            fh.write(json.dumps({"round": record.round, **asdict(receipt)}, sort_keys=True) + "\n")

    def _write(self, records: list[RoundRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(_encode(r) + "\n" for r in records))
        os.replace(tmp, self.path)
