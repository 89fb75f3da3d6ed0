"""Who this client is and what it reads, resolved once from its node config, never from a message.

A **device** is a SuperNode started from a kit (``fedproof client``): its node config names its client id, and with
it the paths of its signing key, allow-list, privacy policy, ledger pin, data and state, and its declared dataset
size. A **simulated client** is the operator's own, on the server's machine (Flower's simulation engine): its node
config holds only its partition, and it takes its keys and data from the run's shared key set and data directory.
Every question of the form "device or simulation?" is answered here, by :meth:`Device.of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context


def _path(value: object) -> Path | None:
    return Path(str(value)).expanduser() if value else None


@dataclass(frozen=True)
class Device:
    client_id: str
    on_device: bool
    """A SuperNode started from a kit, rather than a simulated client."""
    partition_id: int | None
    num_partitions: int | None
    signing_key: Path | None
    allow_list: Path | None
    policy: Path | None
    pin: Path | None
    """The kit's ``trust.json``: the only chain, genesis and contract this device signs for."""
    data_dir: str
    state_dir: Path | None
    declared_examples: int | None
    """Its registered aggregation weight (and the size its privacy is accounted at); None: its exact count."""
    threads: int
    task: str = ""
    """The task this device trains ('': a simulated client takes the run's; a device then only a built-in one)."""
    data: Path | None = None
    """This device's own records (``fedproof client --data PATH``): a CSV, Parquet or .npz file, or an image folder."""

    @classmethod
    def of(cls, context: Context) -> Device:
        config = context.node_config
        given = config.get("client-id")

        def number(key: str) -> int | None:
            value = config.get(key)
            return int(value) if value not in (None, "") else None  # type: ignore[arg-type]

        return cls(
            client_id=str(given) if given is not None else str(config.get("partition-id", "")),
            on_device=given is not None,
            partition_id=number("partition-id"),
            num_partitions=number("num-partitions"),
            signing_key=_path(config.get("signing-key")),
            allow_list=_path(config.get("allow-list")),
            policy=_path(config.get("privacy-policy")),
            pin=_path(config.get("ledger-trust")),
            data_dir=str(config.get("data-dir", "") or ""),
            state_dir=_path(config.get("state-dir")),
            declared_examples=number("declared-examples") or None,
            threads=number("threads") or 0,
            task=str(config.get("task", "") or ""),
            data=_path(config.get("data")),
        )
