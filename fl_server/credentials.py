"""What the server holds to check its clients: the allow-list of signing keys and, with HE, the public context.

With no ``key-set`` configured, a fresh key set is made for the run by ``fedproof keys init`` in a child
process, so the secrets it writes (the clients' signing keys and the CKKS secret context) never enter this
process's memory; the clients read theirs from the same directory, which works when they share this file
system (simulation). A deployment passes the directory of an operator-made key set holding only the
server's files.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fedproof.config import RunConfig
from fedproof.errors import ConfigError
from fedproof.keys import KeySet
from ledger.verification import AllowList
from privacy.he import PublicContext


@dataclass(frozen=True)
class ServerCredentials:
    allow: AllowList
    public: PublicContext | None
    """The CKKS public context; None when HE is off."""


def load_credentials(config: RunConfig, run_path: Path) -> tuple[RunConfig, ServerCredentials]:
    if not config.key_set:
        directory = run_path / "keys"
        command = [sys.executable, "-m", "fedproof.cli", "keys", "init", "--out", str(directory),
                   "--clients", str(config.clients), "--he" if config.he else "--no-he"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"could not create the run's key set: {done.stderr.strip() or done.stdout.strip()}")
        config = config.with_overrides(key_set=str(directory))
    keys = KeySet(Path(config.key_set).expanduser())
    public = PublicContext.load(keys.he_server) if config.he else None
    return config, ServerCredentials(AllowList.load(keys.allowlist), public)
