"""The server's gate before aggregation: who may send, what they signed, and once per round only.

:class:`UpdateVerifier` checks, in this order, and raises the first failure as a typed error (and counts it by
reason): the sender is on the allow-list and not revoked; the signature is valid over the fields as sent
(:class:`BadSignature`: forged or altered); those fields name this chain (id and genesis block), contract, run
and round (:class:`ReplayedUpdate`) and the round's parent model (:class:`WrongParent`); the payload hashes to the signed digest (:class:`PayloadMismatch`); and it is the
client's first update of the round (:class:`DuplicateUpdate`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from fedproof.base.files import read_bounded
from fedproof.base.json_input import loads_bounded
from ledger.errors import (
    BadSignature,
    DuplicateUpdate,
    KeyFileError,
    PayloadMismatch,
    ReplayedUpdate,
    RevokedClient,
    UnknownClient,
    UpdateVerificationError,
    WrongParent,
)
from ledger.signing import ZERO_HASH, SignedFields, verify_signature

_MAX_ALLOWLIST = 4 << 20


_LOADED: dict[bytes, AllowList] = {}
"""Allow-lists this process parsed, by the SHA-256 of the file's bytes (a device reads its file afresh for every
message, so a revocation counts at once; parsing 10,000 keys again each time cost 20 ms)."""


@dataclass(frozen=True)
class AllowList:
    """Client ids and their Ed25519 public keys; the server holds this and nothing secret of the clients."""

    keys: Mapping[str, bytes]
    revoked: frozenset[str] = field(default_factory=frozenset)
    weights: Mapping[str, int] = field(default_factory=dict)
    """Each client's registered aggregation weight (its declared dataset size): the most examples an update of
    its may claim. A client without one is not bounded (key sets made before weights were registered)."""

    def key_for(self, client_id: str) -> bytes:
        if client_id not in self.keys:
            raise UnknownClient(f"client {client_id!r} is not on the allow-list")
        if client_id in self.revoked:
            raise RevokedClient(f"client {client_id!r} was revoked")
        return self.keys[client_id]

    def revoke(self, client_id: str) -> AllowList:
        return AllowList(self.keys, self.revoked | {client_id}, self.weights)

    def with_weights(self, weights: Mapping[str, int]) -> AllowList:
        return AllowList(self.keys, self.revoked, {**self.weights, **weights})

    def to_json(self) -> str:
        doc = {"version": 1, "clients": {k: v.hex() for k, v in sorted(self.keys.items())},
               "revoked": sorted(self.revoked)}
        if self.weights:
            doc["weights"] = dict(sorted(self.weights.items()))
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> AllowList:
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"no allow-list at {path} (create a key set with `fedproof keys init`)")
        data = read_bounded(path, _MAX_ALLOWLIST, "allow-list", KeyFileError)
        content = hashlib.sha256(data).digest()
        if content in _LOADED:  # the same file content: the same (immutable) allow-list, parsed once
            return _LOADED[content]
        try:
            doc = loads_bounded(data.decode())
            keys = {str(k): bytes.fromhex(v) for k, v in doc["clients"].items()}
            revoked = frozenset(str(c) for c in doc.get("revoked", []))
            weights = {str(k): v for k, v in doc.get("weights", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # deep nesting included
            raise KeyFileError(f"{path}: not a fedproof allow-list ({type(exc).__name__})") from exc
        if doc.get("version") != 1 or any(len(k) != 32 for k in keys.values()):
            raise KeyFileError(f"{path}: not a version-1 allow-list of 32-byte Ed25519 keys")
        if any(type(w) is not int or not 1 <= w < 2**31 for w in weights.values()):
            raise KeyFileError(f"{path}: registered weights must be integers in 1..2^31-1")
        loaded = _LOADED[content] = cls(MappingProxyType(keys), revoked, MappingProxyType(weights))
        if len(_LOADED) > 4:
            _LOADED.pop(next(iter(_LOADED)))
        return loaded



@dataclass(frozen=True)
class Domain:
    """Where a signed statement belongs: a chain (its id and genesis block hash), a contract and a run."""

    chain_id: int
    contract: bytes
    run_id: str
    genesis: bytes = ZERO_HASH

    def holds(self, fields: SignedFields) -> bool:
        return (fields.chain_id, fields.genesis, fields.contract, fields.run_id) == (
            self.chain_id, self.genesis, self.contract, self.run_id)


class UpdateVerifier:
    """Verifies the signed updates of one run, round by round."""

    def __init__(self, allow: AllowList, domain: Domain) -> None:
        self.allow, self.domain = allow, domain
        self.rejected: Counter[str] = Counter()
        self._round, self._seen = 0, set()

    def verify(self, fields: SignedFields, signature: bytes, payload_sha256: bytes, server_round: int,
               parent_model_hash: bytes = ZERO_HASH) -> bytes:
        """Check one update of ``server_round``, trained from ``parent_model_hash``; return the signer's public
        key, or raise (and count) why not."""
        if server_round != self._round:
            self._round, self._seen = server_round, set()
        try:
            key = self.allow.key_for(fields.client_id)
            verify_signature(key, fields, signature)
            d = self.domain
            if not d.holds(fields) or fields.round != server_round:
                raise ReplayedUpdate(
                    f"client {fields.client_id}: update signed for chain {fields.chain_id}, run "
                    f"{fields.run_id!r}, round {fields.round}; this is chain {d.chain_id}, run "
                    f"{d.run_id!r}, round {server_round} (or another contract or genesis block)"
                )
            if fields.parent_model_hash != parent_model_hash:
                raise WrongParent(f"client {fields.client_id}: update trained from model "
                                  f"{fields.parent_model_hash.hex()[:16]}…, not this round's parent")
            if fields.payload_sha256 != payload_sha256:
                raise PayloadMismatch(f"client {fields.client_id}: payload does not hash to the signed SHA-256")
            if fields.client_id in self._seen:
                raise DuplicateUpdate(f"client {fields.client_id}: second update in round {server_round}")
        except UpdateVerificationError as exc:
            self.rejected[exc.reason] += 1
            raise
        self._seen.add(fields.client_id)
        return key


def verify_statement(allow: AllowList, domain: Domain, fields: SignedFields, signature: bytes, *, tag: bytes,
                     round: int, client_id: str, payload_sha256: bytes) -> bytes:
    """Check a signed statement other than an update (a key-ceremony step, a partial decryption): signed by
    ``client_id`` (allowed, not revoked), under ``tag``, for this domain and ``round``, over exactly
    ``payload_sha256``. Returns the signer's key; raises the typed error of the first failure."""
    if fields.client_id != client_id or fields.tag != tag:
        raise BadSignature(f"a statement signed as {fields.client_id!r} under another tag; expected {client_id!r}")
    key = allow.key_for(client_id)
    verify_signature(key, fields, signature)
    if not domain.holds(fields) or fields.round != round:
        raise ReplayedUpdate(f"client {client_id}: statement signed for another chain, contract, run or step")
    if fields.payload_sha256 != payload_sha256:
        raise PayloadMismatch(f"client {client_id}: the statement's payload is not the one signed")
    return key
