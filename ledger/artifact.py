"""Loader of the committed compiled contract, ``contracts/build/FedproofLedger.json``.

The artifact is produced by ``node contracts/compile.mjs`` (solc 0.8.28, optimizer 200 runs, evmVersion cancun) and
committed, so running fedproof needs neither node nor a compiler; ``tests/test_contract.py`` checks that it still
matches a fresh compilation of the source. The file is outside bytes to this module: its size and shape are checked
before use and a damaged file raises :class:`~ledger.errors.LedgerArtifactError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ledger.errors import LedgerArtifactError

CONTRACT_NAME = "FedproofLedger"


def _locate() -> Path:
    """The artifact of this checkout; else of the installed project (Flower runs an app from a copy of its .py
    files only, so an app's modules may not sit beside ``contracts/``); else one packaged beside this module."""
    relative = Path("contracts") / "build" / f"{CONTRACT_NAME}.json"
    here = Path(__file__).resolve().parents[1] / relative
    if here.is_file():
        return here
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        direct = distribution("fedproof").read_text("direct_url.json") or "{}"
        url = json.loads(direct).get("url", "")
        if url.startswith("file://") and (Path(url[7:]) / relative).is_file():
            return Path(url[7:]) / relative
    except (PackageNotFoundError, ValueError):
        pass
    packaged = Path(__file__).resolve().parent / f"{CONTRACT_NAME}.json"
    return packaged if packaged.is_file() else here


ARTIFACT_PATH = _locate()
MAX_ARTIFACT_BYTES = 2_000_000  # the real one is ~20 KB; anything this large is not our artifact
_HEX = re.compile(r"0x(?:[0-9a-f]{2})+")
_KEYS = ("abi", "bytecode", "compiler", "contractName", "deployedBytecode", "sourceSha256")


@dataclass(frozen=True)
class Artifact:
    """The compiled contract. ``sha256`` is the SHA-256 of the artifact file's bytes: it names this exact build."""

    contract_name: str
    compiler: str
    abi: tuple[dict[str, Any], ...]
    bytecode: str  # creation code, 0x-prefixed hex
    deployed_bytecode: str  # runtime code, 0x-prefixed hex (immutables appear as zero bytes)
    source_sha256: str
    sha256: str

    @property
    def abi_list(self) -> list[dict[str, Any]]:
        """A fresh list copy of the ABI, the form web3 expects."""
        return [dict(entry) for entry in self.abi]


@lru_cache(maxsize=4)
def load_artifact(path: Path = ARTIFACT_PATH) -> Artifact:
    """Read and check the artifact (cached: it does not change while fedproof runs)."""
    hint = "rebuild it with `npm ci --prefix contracts && node contracts/compile.mjs`"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LedgerArtifactError(f"the compiled contract {path} cannot be read ({exc.strerror}); {hint}") from exc
    if size > MAX_ARTIFACT_BYTES:
        raise LedgerArtifactError(f"{path} is {size} bytes, more than a contract artifact can be; {hint}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerArtifactError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    if not isinstance(data, dict) or sorted(data) != sorted(_KEYS):
        raise LedgerArtifactError(f"{path} does not have exactly the keys {', '.join(_KEYS)}; {hint}")
    if data["contractName"] != CONTRACT_NAME:
        raise LedgerArtifactError(f"{path} holds contract {data['contractName']!r}, not {CONTRACT_NAME}; {hint}")
    for key in ("bytecode", "deployedBytecode"):
        if not isinstance(data[key], str) or not _HEX.fullmatch(data[key]):
            raise LedgerArtifactError(f"{path}: {key} is not 0x-prefixed lowercase hex; {hint}")
    abi = data["abi"]
    if not isinstance(abi, list) or not all(isinstance(entry, dict) and "type" in entry for entry in abi):
        raise LedgerArtifactError(f"{path}: abi is not a list of ABI entries; {hint}")
    return Artifact(
        contract_name=data["contractName"],
        compiler=str(data["compiler"]),
        abi=tuple(abi),
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        source_sha256=str(data["sourceSha256"]),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
