"""What a client reports beside its update, shared by ClientApp and ServerApp (neither imports the other).

A train reply holds the update (``arrays``), FedAvg's ``metrics`` (with ``num-examples``) and a ``client``
ConfigRecord: who the client is, whether it trained or declined, and the privacy it has spent. A client
that declines (its privacy budget would be exceeded) sends no update; the server counts that as a status,
not a failure.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

REPORT_KEY = "client"
TRAINED, BUDGET_EXHAUSTED = "trained", "budget-exhausted"


@dataclass(frozen=True)
class ClientReport:
    client_id: str
    status: str = TRAINED
    epsilon: float | None = None
    """Privacy spent so far; None when the client trains without DP."""
    reason: str = ""

    def to_record(self) -> ConfigRecord:
        record = ConfigRecord({"client-id": self.client_id, "status": self.status, "reason": self.reason})
        if self.epsilon is not None:
            record["epsilon"] = float(self.epsilon)
        return record

    @classmethod
    def from_reply(cls, content: RecordDict) -> ClientReport | None:
        """The report in a reply, or None if it carries none (or not one of ours)."""
        record = content.config_records.get(REPORT_KEY)
        if record is None:
            return None
        epsilon = record.get("epsilon")
        return cls(
            client_id=str(record.get("client-id", "?")),
            status=str(record.get("status", TRAINED)),
            epsilon=float(epsilon) if isinstance(epsilon, (int, float)) else None,  # type: ignore[arg-type]
            reason=str(record.get("reason", "")),
        )
