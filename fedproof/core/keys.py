"""A run's key set, made in one place: one Ed25519 signing key per client and the allow-list.

Layout of a key-set directory (every file 0600)::

    clients/<id>.pem     Ed25519 signing key   -> client <id> only
    allowlist.json       client ids and public keys -> the server (and, registered on chain, the auditors)

``fedproof simulate`` makes one in a child process (so the server's process never holds a secret) and
reuses it across runs on the same ledger, as real clients keep their identities; for a deployment, an
operator runs ``fedproof keys init`` once and hands out the files as above. Threshold HE needs no file here:
the clients generate each run's key together (``fl_server.keygen``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ledger.signing import SigningKey
from ledger.verification import AllowList
from fedproof.base.files import write_atomically

ALLOWLIST, CLIENT_KEYS = "allowlist.json", "clients"


@dataclass(frozen=True)
class KeySet:
    directory: Path

    @property
    def allowlist(self) -> Path:
        return self.directory / ALLOWLIST

    def signing_key(self, client_id: str) -> Path:
        if not client_id or "/" in client_id or client_id in (".", ".."):
            raise ValueError(f"client id {client_id!r} cannot name a key file")
        return self.directory / CLIENT_KEYS / f"{client_id}.pem"


def init_key_set(directory: Path, client_ids: list[str], weights: dict[str, int] | None = None) -> KeySet:
    """Create a key set for ``client_ids`` in ``directory``, or extend the one there: existing keys are kept
    (identities registered on a ledger stay valid), missing ones are created. ``weights`` registers clients'
    aggregation weights (declared dataset sizes) in the allow-list."""
    keys = KeySet(Path(directory))
    allow = AllowList.load(keys.allowlist) if keys.allowlist.is_file() else AllowList({})
    public = dict(allow.keys)
    for client_id in client_ids:
        path = keys.signing_key(client_id)
        key = SigningKey.load(path) if path.is_file() else SigningKey.generate()
        if not path.is_file():
            write_atomically(path, key.to_pem(), private=True)
        public[client_id] = key.public_key
    registry = AllowList(public, allow.revoked, allow.weights).with_weights(weights or {})
    write_atomically(keys.allowlist, registry.to_json().encode(), private=True)
    return keys


def has_keys_for(keys: KeySet, client_ids: list[str]) -> bool:
    if not keys.allowlist.is_file():
        return False
    known = AllowList.load(keys.allowlist).keys
    return all(c in known and keys.signing_key(c).is_file() for c in client_ids)
