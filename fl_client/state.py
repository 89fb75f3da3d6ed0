"""What a client remembers between rounds, kept in Flower's ``Context.state`` (which outlives a message).

Besides counters it holds the client's DP noise multiplier (calibrated once) and its privacy accountant
history, so epsilon composes over every round the client trained in, in simulation and deployment alike.

``Context.state`` lives as long as the client's process (or the simulation): a restart would forget the
privacy already spent and so break the budget. So the state is also written to a file (atomically: temp,
fsync, rename) and read back when ``Context.state`` is empty: ``<state-dir>/<client-id>.json`` from the node
config on a device, or ``<run-dir>/<run-id>/clients/`` in simulation (clients share the file system).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from flwr.app import Context, MetricRecord

from fedproof.files import write_atomically
from privacy.dp import PrivacySpend

STATE_KEY = "fedproof.client"


@dataclass(frozen=True)
class ClientState:
    rounds_trained: int = 0
    examples_seen: int = 0
    last_round: int = 0
    noise_multiplier: float = 0.0
    """DP noise this client trains with; 0 until it is set or calibrated in its first round."""
    spend: PrivacySpend = field(default_factory=PrivacySpend)

    @classmethod
    def load(cls, context: Context, path: Path | None = None) -> ClientState:
        record = context.state.metric_records.get(STATE_KEY)
        if record is None and path is not None and path.is_file():
            record = MetricRecord(json.loads(path.read_text()))
        if record is None:
            return cls()
        return cls(
            rounds_trained=int(record["rounds-trained"]),  # type: ignore[arg-type]
            examples_seen=int(record["examples-seen"]),  # type: ignore[arg-type]
            last_round=int(record["last-round"]),  # type: ignore[arg-type]
            noise_multiplier=float(record["noise-multiplier"]),  # type: ignore[arg-type]
            spend=PrivacySpend.from_lists(
                record["dp-noise"], record["dp-rate"], record["dp-steps"]  # type: ignore[arg-type]
            ),
        )

    def save(self, context: Context, path: Path | None = None) -> None:
        history = self.spend.to_lists()
        context.state[STATE_KEY] = record = MetricRecord(
            {
                "rounds-trained": self.rounds_trained,
                "examples-seen": self.examples_seen,
                "last-round": self.last_round,
                "noise-multiplier": self.noise_multiplier,
                "dp-noise": history["noise"],
                "dp-rate": history["rate"],
                "dp-steps": history["steps"],
            }
        )
        if path is not None:
            write_atomically(path, json.dumps(dict(record)).encode())

    def after_training(
        self, server_round: int, num_examples: int, spend: PrivacySpend | None = None, noise: float = 0.0
    ) -> ClientState:
        return replace(
            self,
            rounds_trained=self.rounds_trained + 1,
            examples_seen=self.examples_seen + num_examples,
            last_round=server_round,
            noise_multiplier=noise or self.noise_multiplier,
            spend=self.spend if spend is None else spend,
        )


def state_file(context: Context, run_dir: str, run_id: str, client_id: str) -> Path | None:
    """Where this client keeps its state on disk (see the module docstring)."""
    if not client_id or "/" in client_id:
        return None
    base = context.node_config.get("state-dir")
    directory = Path(str(base)).expanduser() if base else Path(run_dir).expanduser() / run_id / "clients"
    return directory / f"{client_id}.json"
