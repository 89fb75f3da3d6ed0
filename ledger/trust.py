"""What a device or an auditor pins: the chain (id and genesis block hash), the lineage contract, the operator's
deployment-signing key, and the RPC endpoints it asks.

A kit's ``trust.json`` holds one; nothing the server sends at run time can change it. Every fresh anvil has
chain id 31337 and the same first contract address, so the genesis hash is what tells one devnet from another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedproof.base.files import read_bounded
from fedproof.base.json_input import loads_bounded
from ledger.errors import KeyFileError

_MAX_TRUST_FILE = 64 << 10


@dataclass(frozen=True)
class LedgerTrust:
    chain_id: int
    genesis: bytes
    """32-byte genesis block hash."""
    contract: bytes
    """20-byte address of the lineage contract."""
    deployment_key: bytes = b""
    """The operator's Ed25519 deployment-signing public key (32 bytes): the only key whose manifests install."""
    rpc_urls: tuple[str, ...] = field(default_factory=tuple)
    """Endpoints a device asks; with two or more, every one must agree on the chain and the records."""

    def __post_init__(self) -> None:
        if len(self.genesis) != 32 or len(self.contract) != 20 or len(self.deployment_key) not in (0, 32):
            raise KeyFileError("a ledger pin needs a 32-byte genesis hash, a 20-byte contract and an Ed25519 key")

    @property
    def contract_address(self) -> str:
        return "0x" + self.contract.hex()

    def to_json(self) -> str:
        doc = {"version": 1, "chain_id": self.chain_id, "genesis": "0x" + self.genesis.hex(),
               "contract": self.contract_address, "deployment_key": self.deployment_key.hex(),
               "rpc_urls": list(self.rpc_urls)}
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> LedgerTrust:
        path = Path(path)
        if not path.is_file():
            raise KeyFileError(f"no ledger pin at {path} (a kit's trust.json, from `fedproof provision`)")
        data = read_bounded(path, _MAX_TRUST_FILE, "ledger pin", KeyFileError)
        try:
            doc = loads_bounded(data.decode())
            trust = cls(int(doc["chain_id"]), bytes.fromhex(doc["genesis"].removeprefix("0x")),
                        bytes.fromhex(doc["contract"].removeprefix("0x")), bytes.fromhex(doc.get("deployment_key", "")),
                        tuple(str(u) for u in doc.get("rpc_urls", [])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"{path}: not a fedproof ledger pin ({exc})") from exc
        if doc.get("version") != 1:
            raise KeyFileError(f"{path}: not a version-1 ledger pin")
        return trust
