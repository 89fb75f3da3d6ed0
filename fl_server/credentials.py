"""What the server holds to check its clients: the allow-list of signing keys (threshold HE needs nothing more:
the clients generate the run's key together at the start of each run).

With no ``key-set`` configured (simulation), a key set is made by ``fedproof keys init`` in a child process, so
the secrets it writes (the clients' signing keys) never enter this process's memory; the clients read theirs
from the same directory, which works when they share this file system. It is kept beside the ledger and reused
by later runs, since client identities are registered on chain. A deployment passes the directory of an
operator-made key set holding only the server's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedproof.core.client_data import load_client_data
from fedproof.core.config import RunConfig
from fedproof.base.errors import ConfigError
from fedproof.core.keys import KeySet, has_keys_for, init_key_set
from ledger.defaults import DEFAULT_DATA_DIR
from ledger.verification import AllowList


@dataclass(frozen=True)
class ServerCredentials:
    allow: AllowList


def load_credentials(config: RunConfig, run_path: Path) -> tuple[RunConfig, ServerCredentials]:
    if config.key_set:
        return config, _load(config)
    directory = simulation_keys(config, run_path)
    ids = [str(i) for i in range(config.clients)]
    config = config.with_overrides(key_set=str(directory))
    if not has_keys_for(KeySet(directory), ids):
        try:
            init_key_set(directory, ids)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not create the run's key set in {directory}: {exc}") from exc
    credentials = _load(config)
    # Simulated data holders are the operator's: it registers each one's partition size as its weight.
    sizes = {i: len(load_client_data(config, int(i), config.clients).train_y) for i in ids}
    return config, ServerCredentials(credentials.allow.with_weights(sizes))


def _load(config: RunConfig) -> ServerCredentials:
    keys = KeySet(Path(config.key_set).expanduser())
    return ServerCredentials(AllowList.load(keys.allowlist))


def simulation_keys(config: RunConfig, run_path: Path) -> Path:
    """Where simulated clients keep their keys: beside the ledger they are registered on (so they keep their
    identities across runs), or in the run directory without a ledger."""
    if config.ledger:
        return Path(config.devnet_dir or DEFAULT_DATA_DIR).expanduser() / "simulation-keys"
    return run_path / "keys"
