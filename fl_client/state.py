"""What a client remembers: the privacy its dataset has spent (for life), and this run's counters and noise.

The privacy spent is an accountant history (``PrivacySpend``) that composes over every round of every run that
trained on this dataset: a new run, or a server that asks under a new run id, continues it; it never restarts.
The run's own fields (its calibrated noise multiplier, rounds trained, last round) start afresh when the run
changes.

Where it lives: Flower's ``Context.state`` (for as long as the client's process and run last) and, durably, a
file written atomically (temp, fsync, rename) that is read when ``Context.state`` is empty:
``<state-dir>/<client-id>-<dataset>.json`` on a device (``state-dir`` from its own node config, which no message
can change), or ``<run-dir>/client-state/`` in a simulation, shared by every run in that run directory.
``<dataset>`` names the records (``fedproof.core.data.Dataset.identity``), not the partition a run assigns: a server
that reshuffles partitions finds the same budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, MetricRecord

from fedproof.base.records import get_record
from fedproof.base.files import read_bounded, write_atomically
from fl_client.device import Device
from privacy.dp import PrivacySpend

STATE_KEY, RUN_KEY = "fedproof.client", "fedproof.client.run"
_MAX_STATE_FILE = 1 << 20


@dataclass(frozen=True)
class ClientState:
    rounds_trained: int = 0
    examples_seen: int = 0
    last_round: int = 0
    noise_multiplier: float = 0.0
    """DP noise this client trains with in this run; 0 until it is set or calibrated in its first round."""
    spend: PrivacySpend = field(default_factory=PrivacySpend)
    """Everything this dataset has spent, over all runs."""
    run_id: str = ""
    user_spend: PrivacySpend = field(default_factory=PrivacySpend)
    """User-level DP: everything this device's whole dataset has spent, over all runs (a separate accountant: a
    sample-level step gives no user-level guarantee)."""
    drawn_through: int = 0
    """User-level DP: the last round of this run whose coin this device has drawn (and accounted)."""
    next_part: int = 0
    """User-level DP: the round among those drawn whose coin said "take part" (0: none). Asked for any drawn round
    again, the device gives the same answer and spends nothing more."""
    server_spend: PrivacySpend = field(default_factory=PrivacySpend)
    """User-level DP as the server sees it: the server knows which rounds this device uploaded in, so sampling
    amplifies nothing against it; one unsampled Gaussian step per round taken part in, over all runs."""

    @classmethod
    def load(cls, context: Context, path: Path | None = None, run_id: str = "") -> ClientState:
        """This client's state for run ``run_id``: the run's own fields reset if the saved state is another run's."""
        record = get_record(context.state, STATE_KEY, MetricRecord)
        saved_run = get_record(context.state, RUN_KEY, ConfigRecord)
        if record is None and path is not None and path.is_file():
            doc = json.loads(read_bounded(path, _MAX_STATE_FILE, "client state file", ValueError))
            saved_run = {"run-id": str(doc.pop("run-id", ""))}
            record = MetricRecord(doc)
        if record is None:
            return cls(run_id=run_id)
        values: dict[str, Any] = dict(record)

        def spend(prefix: str) -> PrivacySpend:  # a history that went missing is damage, not a fresh budget
            return PrivacySpend.from_lists(*(values[f"{prefix}-{k}"] for k in ("noise", "rate", "steps")))

        state = cls(
            rounds_trained=int(values["rounds-trained"]),
            examples_seen=int(values["examples-seen"]),
            last_round=int(values["last-round"]),
            noise_multiplier=float(values["noise-multiplier"]),
            spend=spend("dp"),
            run_id=str(saved_run.get("run-id", "")) if saved_run is not None else "",
            user_spend=spend("user") if "user-noise" in values else PrivacySpend(),  # states before user-level DP
            drawn_through=int(values.get("drawn-through", values.get("last-asked", 0))),
            next_part=int(values.get("next-part", values.get("last-asked", 0) if values.get("took-part") else 0)),
            server_spend=spend("server") if "server-noise" in values else PrivacySpend(),
        )
        if state.run_id != run_id:  # another run: its noise and counters are not this run's; its spend is
            state = cls(spend=state.spend, examples_seen=state.examples_seen, run_id=run_id,
                        user_spend=state.user_spend, server_spend=state.server_spend)
        return state

    def save(self, context: Context, path: Path | None = None) -> None:
        history, users, seen = self.spend.to_lists(), self.user_spend.to_lists(), self.server_spend.to_lists()
        context.state[STATE_KEY] = record = MetricRecord(
            {
                "rounds-trained": self.rounds_trained,
                "examples-seen": self.examples_seen,
                "last-round": self.last_round,
                "noise-multiplier": self.noise_multiplier,
                "dp-noise": history["noise"],
                "dp-rate": history["rate"],
                "dp-steps": history["steps"],
                "user-noise": users["noise"],
                "user-rate": users["rate"],
                "user-steps": users["steps"],
                "drawn-through": self.drawn_through,
                "next-part": self.next_part,
                "server-noise": seen["noise"],
                "server-rate": seen["rate"],
                "server-steps": seen["steps"],
            }
        )
        context.state[RUN_KEY] = ConfigRecord({"run-id": self.run_id})
        if path is not None:
            write_atomically(path, json.dumps({**dict(record), "run-id": self.run_id}).encode())

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


DEVICE_STATE_DIR = "~/.local/share/fedproof/client-state"
"""A device's privacy history when its node config names no ``state-dir`` (``fedproof client`` always does)."""


def state_file(context: Context, run_dir: str, client_id: str, dataset: str) -> Path | None:
    """Where this client keeps its state on disk (see the module docstring)."""
    directory = state_directory(context, run_dir, client_id)
    return None if directory is None else directory / f"{client_id}-{dataset[:16] or 'data'}.json"


def state_directory(context: Context, run_dir: str, client_id: str) -> Path | None:
    """The directory of this client's files that outlive a run (None for an id that cannot name a file)."""
    if not client_id or "/" in client_id or client_id in (".", ".."):
        return None
    device = Device.of(context)
    base = device.state_dir or (Path(DEVICE_STATE_DIR).expanduser() if device.on_device else None)
    # a device keeps its history where it chose, never at a path the server's settings name
    return base if base is not None else Path(run_dir).expanduser() / "client-state"


def count_draw(context: Context, run_dir: str, client_id: str) -> int:
    """One more committee draw this device took part in, over its lifetime (every run): the count, kept on disk
    before it answers. A server that starts run after run until a draw suits it pays with this count, which every
    device multiplies its capture risk by (ledger.committee)."""
    directory = state_directory(context, run_dir, client_id)
    if directory is None:
        raise ValueError(f"client id {client_id!r} cannot name a state file")
    path = directory / f"{client_id}-draws.json"
    count = 0
    if path.is_file():
        doc = json.loads(read_bounded(path, 4096, "draw count file", ValueError))
        count = int(doc.get("draws", 0)) if isinstance(doc, dict) else 0
    write_atomically(path, json.dumps({"draws": count + 1}).encode())
    return count + 1
