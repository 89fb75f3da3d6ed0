"""A round's off-chain bundle: every admitted update's signed fields, key and signature, the clients' co-signatures
of the resulting model, and what was rejected.

Its SHA-256 goes on chain beside the Merkle root of its leaves, so an auditor holding the file can check it
byte for byte against the chain, rebuild each leaf from its preimage, recompute the root and verify every
signature, and check that at least t clients other than the server vouched for the new model's hash. Encoding: JSON with sorted keys, no whitespace, ASCII only, bytes as lowercase hex: one byte
string per bundle. Bundles are found by content (their hash), whatever their file name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fedproof.base.files import read_bounded
from fedproof.base.json_input import loads_bounded
from ledger.errors import LedgerError
from ledger.merkle import MerkleTree
from ledger.signing import MODEL_TAG, NO_DP, UPDATE_TAG, ZERO_HASH, SignedFields, leaf_bytes, model_statement_chunks, payload_digest

_MAX_BUNDLE = 64 << 20


class BundleError(LedgerError, ValueError):
    """A bundle file is missing, oversized, malformed, or does not match what the chain recorded."""


@dataclass(frozen=True)
class SignedUpdate:
    """One admitted update as the ledger keeps it: the signed fields, the signer's key and the signature (a leaf)."""

    fields: SignedFields
    public_key: bytes
    signature: bytes

    @property
    def leaf(self) -> bytes:
        return leaf_bytes(self.fields, self.public_key, self.signature)


@dataclass(frozen=True)
class Cosignature:
    """A client's signature of the round's model statement (see :meth:`RoundBundle.statement`)."""

    client_id: str
    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class RoundBundle:
    run_id: str
    round: int
    chain_id: int
    contract: bytes
    parent_model_hash: bytes
    model_hash: bytes
    updates: tuple[SignedUpdate, ...] = ()
    rejected: tuple[str, ...] = ()
    """Why each refused update of the round was refused (nothing is dropped silently)."""
    failed: str = ""
    """Why the round left the model unchanged, if it did."""
    genesis: bytes = ZERO_HASH
    threshold: int = 0
    """The decryption key's threshold t (0: no threshold key, so no co-signatures)."""
    holders: int = 0
    """How many clients hold shares of that key (as the server wrote it: auditors take t and the holders from the
    key statement on chain, never from here)."""
    cosignatures: tuple[Cosignature, ...] = ()
    key_sha256: bytes = ZERO_HASH
    """The key statement the co-signers decrypted under (its digest is in every co-signature)."""

    def statement(self, client_id: str) -> SignedFields:
        """The fields ``client_id`` signs to vouch that this round turned the parent into this model."""
        chunks = model_statement_chunks(self.parent_model_hash, self.model_hash, self.merkle_root,
                                        len(self.updates), self.key_sha256)
        return SignedFields(chain_id=self.chain_id, contract=self.contract, run_id=self.run_id, round=self.round,
                            client_id=client_id, payload_sha256=payload_digest(chunks), num_examples=0,
                            epsilon_scaled=NO_DP, tag=MODEL_TAG, genesis=self.genesis)

    @property
    def merkle_root(self) -> bytes:
        return MerkleTree([u.leaf for u in self.updates]).root

    @property
    def epsilon_max_scaled(self) -> int:
        """Largest epsilon spent (scaled) among the updates; NO_DP when none trained with DP."""
        scaled = [u.fields.epsilon_scaled for u in self.updates if u.fields.epsilon_scaled != NO_DP]
        return max(scaled) if scaled else NO_DP

    def to_bytes(self) -> bytes:
        updates = sorted(self.updates, key=lambda u: hashlib.sha256(u.leaf).digest())
        doc = {
            "version": 3, "key_sha256": self.key_sha256.hex(), "run_id": self.run_id, "round": self.round, "chain_id": self.chain_id,
            "genesis": self.genesis.hex(), "threshold": self.threshold, "holders": self.holders,
            "cosignatures": [{"client_id": c.client_id, "public_key": c.public_key.hex(), "signature": c.signature.hex()}
                             for c in sorted(self.cosignatures, key=lambda c: c.client_id)],
            "contract": self.contract.hex(), "parent_model_hash": self.parent_model_hash.hex(),
            "model_hash": self.model_hash.hex(), "merkle_root": self.merkle_root.hex(),
            "epsilon_max_scaled": str(self.epsilon_max_scaled), "rejected": list(self.rejected), "failed": self.failed,
            "updates": [
                {"client_id": u.fields.client_id, "payload_sha256": u.fields.payload_sha256.hex(),
                 "num_examples": u.fields.num_examples, "epsilon_scaled": str(u.fields.epsilon_scaled),
                 "public_key": u.public_key.hex(), "signature": u.signature.hex()}
                for u in updates
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "bundle") -> RoundBundle:
        try:
            doc = loads_bounded(data)
            contract, genesis = bytes.fromhex(doc["contract"]), bytes.fromhex(doc["genesis"])
            parent = bytes.fromhex(doc["parent_model_hash"])
            updates = tuple(
                SignedUpdate(
                    SignedFields(chain_id=int(doc["chain_id"]), contract=contract, run_id=str(doc["run_id"]),
                                 round=int(doc["round"]), client_id=str(u["client_id"]),
                                 payload_sha256=bytes.fromhex(u["payload_sha256"]),
                                 num_examples=int(u["num_examples"]), epsilon_scaled=int(u["epsilon_scaled"]),
                                 tag=UPDATE_TAG, genesis=genesis, parent_model_hash=parent),
                    bytes.fromhex(u["public_key"]), bytes.fromhex(u["signature"]),
                )
                for u in doc["updates"]
            )
            cosignatures = tuple(Cosignature(str(c["client_id"]), bytes.fromhex(c["public_key"]),
                                             bytes.fromhex(c["signature"])) for c in doc["cosignatures"])
            bundle = cls(str(doc["run_id"]), int(doc["round"]), int(doc["chain_id"]), contract, parent,
                         bytes.fromhex(doc["model_hash"]), updates, tuple(str(r) for r in doc["rejected"]),
                         str(doc["failed"]), genesis, int(doc["threshold"]), int(doc["holders"]), cosignatures,
                         bytes.fromhex(doc["key_sha256"]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise BundleError(f"{what}: not a fedproof round bundle ({exc})") from exc
        if doc.get("version") != 3 or len(bundle.key_sha256) != 32 or bundle.to_bytes() != bytes(data):
            raise BundleError(f"{what}: not in canonical form (altered, or not version 3)")
        return bundle

    @property
    def file_name(self) -> str:
        """The name a run directory keeps it under (auditors find bundles by content, whatever the name)."""
        return f"round-{self.round}.json"


def find_bundle(directories: list[Path], sha256: bytes) -> RoundBundle:
    """The bundle whose bytes hash to ``sha256``, searched in ``directories`` (content-addressed)."""
    for directory in directories:
        for path in sorted(Path(directory).glob("*.json")):
            try:
                data = read_bounded(path, _MAX_BUNDLE, "round bundle", BundleError)
            except BundleError:
                continue  # larger than any bundle, or gone: not the one
            if hashlib.sha256(data).digest() == sha256:
                return RoundBundle.from_bytes(data, str(path))
    searched = ", ".join(map(str, directories)) or "no directory"
    raise BundleError(f"no bundle with SHA-256 {sha256.hex()} (searched: {searched}); name the directory that holds "
                      "the run's bundles with --bundles (a run's <run-dir>/ledger, or a registry's bundles/)")
