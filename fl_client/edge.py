"""The edge device: pull a deployed model only if the ledger vouches for it, then predict with onnxruntime alone.

No torch anywhere on this path (a device needs numpy and onnxruntime, plus web3 to ask the ledger). A pull
reads the artifact's bytes once, hashes them, checks that a ``DeploymentRecorded`` event holds that hash,
and only then installs those same bytes; loading for prediction re-hashes the bytes it loads against the
pinned hash and builds the session from them, so nothing can be swapped between check and use.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedproof.data import parse_idx
from fedproof.errors import FedproofError
from fedproof.files import write_atomically
from fedproof.inference import predict, session
from ledger.contract import LedgerContract

MAX_ARTIFACT_BYTES = 256 << 20
MAX_INPUT_BYTES = 512 << 20
CURRENT = "current.json"


class ArtifactRejected(FedproofError):
    """A model artifact is unknown to the ledger, altered, or unreadable: it was not installed or loaded."""


@dataclass(frozen=True)
class Installed:
    artifact_sha256: str
    source_model_sha256: str
    run_round: int
    block_number: int
    tx_hash: str
    path: str


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    if not path.is_file():
        raise ArtifactRejected(f"no {what} at {path}")
    if path.stat().st_size > limit:
        raise ArtifactRejected(f"{path}: larger than any {what} ({limit} bytes)")
    return path.read_bytes()


def pull(ref: str, registry: Path, install_dir: Path, contract: LedgerContract) -> Installed:
    """Install the artifact ``ref`` (its SHA-256 in hex, or ``latest``) from ``registry`` if the ledger vouches for it."""
    if ref == "latest":
        deployments = [e for e in contract.deployment_events() if (registry / f"{e.artifact_hash.hex()}.onnx").is_file()]
        if not deployments:
            raise ArtifactRejected(f"no deployment recorded on the ledger is in the registry {registry}")
        wanted = deployments[-1].artifact_hash
    else:
        try:
            wanted = bytes.fromhex(ref)
        except ValueError:
            wanted = b""
        if len(wanted) != 32:
            raise ArtifactRejected(f"{ref!r} is not an artifact hash (64 hex digits) or 'latest'")
    data = _read_limited(registry / f"{wanted.hex()}.onnx", MAX_ARTIFACT_BYTES, "model artifact")
    if hashlib.sha256(data).digest() != wanted:
        raise ArtifactRejected(f"artifact {wanted.hex()[:16]}… in {registry} does not hash to its name: altered, "
                               "refusing it")
    records = contract.deployment_events(artifact_hash=wanted)
    if not records:
        raise ArtifactRejected(f"artifact {wanted.hex()} is not recorded as a deployment on the ledger: refusing it")
    try:
        session(data)  # it must load before it is installed
    except Exception as exc:  # onnxruntime raises its own, untyped, errors
        raise ArtifactRejected(f"artifact {wanted.hex()[:16]}… does not load: {exc}") from exc
    record = records[-1]
    install_dir.mkdir(parents=True, exist_ok=True)
    target = install_dir / f"{wanted.hex()}.onnx"
    write_atomically(target, data)
    installed = Installed(wanted.hex(), record.model_hash.hex(), record.round, record.block_number, record.tx_hash,
                          str(target))
    write_atomically(install_dir / CURRENT, (json.dumps(asdict(installed), indent=2) + "\n").encode())
    return installed


def load(install_dir: Path):
    """The installed model's session, built from bytes re-hashed against the hash pinned at install."""
    try:
        current = Installed(**json.loads(_read_limited(install_dir / CURRENT, 1 << 16, "installed model record")))
    except (TypeError, ValueError) as exc:
        raise ArtifactRejected(f"{install_dir / CURRENT}: not an installed-model record ({exc})") from exc
    data = _read_limited(Path(current.path), MAX_ARTIFACT_BYTES, "model artifact")
    if hashlib.sha256(data).hexdigest() != current.artifact_sha256:
        raise ArtifactRejected(f"installed model {current.path} was altered after it was verified: not loading it")
    return session(data), current


def read_images(path: Path) -> np.ndarray:
    """uint8 ``(n, 28, 28)`` images from an IDX file (gzipped or not) or a ``.npy`` (never pickled)."""
    data = _read_limited(path, MAX_INPUT_BYTES, "image file")
    if path.suffix == ".npy":
        import io

        try:
            images = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise FedproofError(f"{path}: not a .npy array ({exc})") from exc
    else:
        images = parse_idx(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data, str(path))
    if images.ndim == 2 and images.shape[1] == 784:
        images = images.reshape(-1, 28, 28)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise FedproofError(f"{path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}")
    return images


def classify(install_dir: Path, images: np.ndarray) -> np.ndarray:
    sess, _ = load(install_dir)
    return predict(sess, images)

