"""What a client remembers between rounds, kept in Flower's ``Context.state`` (which outlives a message)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from flwr.app import Context, MetricRecord

STATE_KEY = "fedproof.client"


@dataclass(frozen=True)
class ClientState:
    rounds_trained: int = 0
    examples_seen: int = 0
    last_round: int = 0

    @classmethod
    def load(cls, context: Context) -> ClientState:
        record = context.state.metric_records.get(STATE_KEY)
        if record is None:
            return cls()
        return cls(**{k: int(v) for k, v in record.items()})  # type: ignore[arg-type]

    def save(self, context: Context) -> None:
        context.state[STATE_KEY] = MetricRecord(asdict(self))

    def after_training(self, server_round: int, num_examples: int) -> ClientState:
        return replace(
            self,
            rounds_trained=self.rounds_trained + 1,
            examples_seen=self.examples_seen + num_examples,
            last_round=server_round,
        )
