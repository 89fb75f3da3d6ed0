"""Signed deployment manifests: what the operator vouches for when it ships a model to the devices.

A device installs an artifact only under a manifest signed by the operator's deployment key, which the device pins
(its kit's ``trust.json``); an event on the ledger alone is not enough (anyone who can write to some contract on
some chain can emit one). The manifest names the artifact and the model it was made from, the run and round, a
version, a sequence number that only grows, an expiry, and the chain it is recorded on. A device refuses a
sequence number it has already passed (a replayed older manifest, a rollback) unless the manifest is a rollback
statement: a new, higher-numbered manifest that names the older artifact as its target on purpose.

Bytes signed (fixed layout, integers big-endian, strings with a u16 length)::

    "fedproof/deployment/v1" 0x00 | chain id u64 | genesis 32 B | contract 20 B | artifact 32 B | source model 32 B
    | run id str | round u64 | version str | sequence u64 | expires u64 (unix s)
    | canonical graph str | per-channel u8 | calibration images 32 B | rollback u8 | drift profile 32 B (absent: nothing)

The derivation (canonical graph, per-channel weights, the calibration images' hash) is how a device rebuilds the
artifact from the co-signed model before it installs it (:mod:`fedproof.core.artifact`): the operator's signature
alone never makes a graph or a weight acceptable.

The drift profile (``fedproof.core.drift.ReferenceProfile``, a file beside the artifact) is what a device compares its
inputs against; signing its hash means nobody but the operator can make a device believe all is well.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedproof.base.files import read_bounded
from fedproof.base.json_input import loads_bounded
from ledger.errors import LedgerError
from ledger.signing import SigningKey
from ledger.signing import manifest_bytes

MAX_MANIFEST_BYTES = 64 << 10
HEX_FIELDS = ("genesis", "contract", "artifact_sha256", "source_model_sha256", "profile_sha256")
VERSION = 2


class ManifestError(LedgerError):
    """A deployment manifest is malformed, unsigned, or signed by a key the device does not pin."""


@dataclass(frozen=True)
class Derivation:
    """How the artifact is made from its source model (:func:`fedproof.core.artifact.derive`)."""

    graph: str
    """The canonical graph's name, ``<model>-<classes>`` (the device reads its own copy)."""
    per_channel: bool
    calibration_sha256: bytes
    """SHA-256 of the calibration images' ``.npy`` (``<registry>/calibration/<hash>.npy``)."""

    def __post_init__(self) -> None:
        if len(self.calibration_sha256) != 32 or not isinstance(self.per_channel, bool) or \
                not isinstance(self.graph, str):
            raise ManifestError("a derivation names a graph, per-channel (a bool) and a 32-byte calibration hash")


@dataclass(frozen=True)
class DeploymentManifest:
    chain_id: int
    genesis: bytes
    contract: bytes
    artifact_sha256: bytes
    source_model_sha256: bytes
    run_id: str
    round: int
    version: str
    sequence: int
    expires: int
    """Unix time after which a device no longer installs under this manifest."""
    derivation: Derivation
    rollback: bool = False
    """True: an explicit rollback statement, naming an older artifact as the target on purpose."""
    profile_sha256: bytes = b""
    """SHA-256 of the artifact's drift profile (``<artifact>.profile.json``); empty: none was published."""

    def __post_init__(self) -> None:
        sizes = (len(self.genesis), len(self.contract), len(self.artifact_sha256), len(self.source_model_sha256))
        if sizes != (32, 20, 32, 32) or len(self.profile_sha256) not in (0, 32):
            raise ManifestError("a manifest needs a 32-byte genesis, 20-byte contract and 32-byte hashes")
        if not (0 <= self.round < 2**64 and 0 < self.sequence < 2**64 and 0 <= self.expires < 2**64):
            raise ManifestError("a manifest's round, sequence (from 1) and expiry must be u64")

    def canonical_bytes(self) -> bytes:
        return manifest_bytes(self)


@dataclass(frozen=True)
class SignedManifest:
    manifest: DeploymentManifest
    signer: bytes
    """The Ed25519 public key that signed (32 bytes)."""
    signature: bytes

    @classmethod
    def signed_by(cls, key: SigningKey, manifest: DeploymentManifest) -> SignedManifest:
        return cls(manifest, key.public_key, key.sign(manifest))

    def verify(self, pinned_key: bytes) -> DeploymentManifest:
        """The manifest, if ``pinned_key`` signed it; else :class:`ManifestError`."""
        if not pinned_key:
            raise ManifestError("this device pins no deployment key: it installs nothing")
        if self.signer != pinned_key:
            raise ManifestError(f"the manifest is signed by {self.signer.hex()[:16]}…, not the operator key this "
                                f"device pins ({pinned_key.hex()[:16]}…)")
        try:
            Ed25519PublicKey.from_public_bytes(pinned_key).verify(self.signature, self.manifest.canonical_bytes())
        except (InvalidSignature, ValueError) as exc:
            raise ManifestError("the manifest's signature does not match its contents") from exc
        return self.manifest

    def to_json(self) -> str:
        m = asdict(self.manifest)
        for key in HEX_FIELDS:
            m[key] = m[key].hex()
        m["derivation"]["calibration_sha256"] = m["derivation"]["calibration_sha256"].hex()
        return json.dumps({"version": VERSION, "manifest": m, "signer": self.signer.hex(),
                           "signature": self.signature.hex()}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> SignedManifest:
        path = Path(path)
        if not path.is_file():
            raise ManifestError(f"no signed manifest at {path}: an unsigned artifact is not installed")
        data = read_bounded(path, MAX_MANIFEST_BYTES, "manifest", ManifestError)
        try:
            doc = loads_bounded(data.decode())
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ManifestError(f"{path}: not a version-{VERSION} deployment manifest (one from before fedproof "
                                    "derived artifacts on the device: deploy the model again)")
            m = {"profile_sha256": "", **dict(doc["manifest"])}
            for key in HEX_FIELDS:
                m[key] = bytes.fromhex(m[key])
            d = dict(m["derivation"])
            m["derivation"] = Derivation(d["graph"], d["per_channel"], bytes.fromhex(d["calibration_sha256"]))
            manifest = DeploymentManifest(**{k: m[k] for k in DeploymentManifest.__dataclass_fields__})
            signed = cls(manifest, bytes.fromhex(doc["signer"]), bytes.fromhex(doc["signature"]))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ManifestError(f"{path}: not a fedproof deployment manifest ({exc})") from exc
        if not isinstance(manifest.rollback, bool):
            raise ManifestError(f"{path}: rollback is not a boolean")
        return signed


#: The operator's deployment key: a :class:`~ledger.signing.SigningKey`, kept encrypted in the operator directory.
DeploymentKey = SigningKey
