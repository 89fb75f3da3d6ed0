"""Deploy a recorded global model: ONNX export, static int8 quantization (QDQ), accuracy gate, registry, ledger.

Why static QDQ int8 on onnxruntime: one file any onnxruntime build loads (desktop, ARM Linux, ORT Mobile),
no torch on the device, and measured ~4x smaller and ~2x faster than fp32 with no accuracy loss on CNNs
(dynamic int8 only quantizes linear layers and was 5x *slower* than fp32 here, so it is never shipped).

The exported graph takes raw ``uint8 (n, 28, 28)`` images and standardises them itself, so a device needs no
preprocessing code that could drift from training's. Calibration uses training images (server-side data,
never the test set); fp32 and int8 are both evaluated on the full test set, and publishing is refused when
int8 loses more than ``max_drop_pp`` points. A published artifact is content-addressed in the registry
(``<sha256>.onnx`` + ``<sha256>.json``), recorded on chain against the round that produced its source model, and
shipped under a manifest signed with the operator's deployment key (``<sha256>.manifest.json``: artifact, source
model, run, round, version, a sequence number that only grows, an expiry, the chain); the run's round bundles are
copied into ``<registry>/bundles`` so a device can check the source model's co-signed lineage itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from safetensors.numpy import load as safetensors_load
from torch import nn

from fedproof.core.artifact import (
    APP_GRAPH_SUFFIX,
    LEARNED,
    RECORD,
    DerivationError,
    app_graph_bytes,
    calibration_bytes,
    canonical_graph,
    compact,
    derive,
    graph_name,
    record_json,
)
from fedproof.core.data import Dataset
from fedproof.core.drift import build_profile
from fedproof.base.errors import FedproofError
from fedproof.base.files import write_atomically
from fedproof.core.inference import INPUT, predict, session
from fedproof.core.loaders import RecordSpec
from fedproof.core.model import ExtractorHead
from fedproof.core.rundir import RunDirectory
from fedproof.core.task import BUILT_IN, load_task
from ledger.contract import LedgerContract, Receipt
from ledger.manifest import DeploymentKey, DeploymentManifest, Derivation, SignedManifest
from ledger.signing import run_id_hash

TARGET = "onnx-int8-qdq"


class DeployError(FedproofError):
    """A model cannot be deployed (not on the ledger, or quantization would cost too much accuracy)."""


class AccuracyDropTooLarge(DeployError):
    """The int8 model is less accurate than fp32 by more than allowed: nothing was published."""


@dataclass(frozen=True)
class DeploySettings:
    max_drop_pp: float = 1.0
    """Largest accuracy loss (percentage points) of int8 against fp32 that may be published."""
    calibration_size: int = 512
    profile_size: int = 2000
    """Training images the drift profile is built from (half fit its features, half are the reference)."""
    seed: int = 0
    per_channel: bool = True


@dataclass(frozen=True)
class Deployment:
    artifact_sha256: str
    source_model_sha256: str
    run_id: str
    round: int
    fp32_accuracy: float
    int8_accuracy: float
    fp32_bytes: int
    int8_bytes: int
    settings: DeploySettings
    artifact: str
    """Path of the published artifact."""
    tx_hash: str = ""
    block_number: int = 0
    profile_sha256: str = ""
    """The drift profile published beside the artifact (``<artifact>.profile.json``), signed in its manifest."""


class _Standardised(nn.Module):
    """Raw records in, outputs out: the model behind its own ``prepare`` (the same as training's)."""

    def __init__(self, model: ExtractorHead) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.predict_raw(images)


def load_model_file(path: Path, num_classes: int = 10, model_name: str = "", task: str = "fashion-mnist"
                    ) -> tuple[nn.Module, bytes]:
    """The torch model (``task``'s ``model_name``) held by a safetensors model file, and the SHA-256 of its exact
    bytes."""
    data = Path(path).read_bytes()
    model = load_task(task).model(model_name, num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in safetensors_load(data).items()})
    return model.eval(), hashlib.sha256(data).digest()


def _export(model: ExtractorHead, record: RecordSpec) -> bytes:
    """torch's ONNX export of ``model`` behind its ``prepare``, taking raw records, with a dynamic batch dimension
    (uncompacted)."""
    wrapped = _Standardised(model).eval()
    example = torch.zeros((2, *record.shape), dtype=getattr(torch, record.dtype))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" x4, harmless
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[INPUT],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
        program.save(str(path), external_data=False)
        return path.read_bytes()


def build_graph(model_name: str, num_classes: int, task: str = "fashion-mnist") -> bytes:
    """The canonical graph of a model (:mod:`fedproof.core.artifact`): its export with each learned initializer named by
    its state-dict key and left empty. Which initializer holds which tensor is found by content (the weights are
    seeded and distinct), so an exporter that transposed or folded one fails here rather than shipping."""
    spec = load_task(task)
    model = spec.model(model_name, num_classes, seed=0).eval()
    raw = onnx.load_from_string(_export(model, spec.record))
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    keep: dict[str, str] = {}
    for init in raw.graph.initializer:
        value = numpy_helper.to_array(init)
        found = [k for k, v in state.items() if v.shape == value.shape and np.array_equal(v, value)]
        if len(found) == 1:
            keep[init.name] = found[0]
    if sorted(keep.values()) != sorted(state):
        raise DeployError(f"the export of {model_name} does not hold its tensors {sorted(state)} as they are")
    graph = onnx.load_from_string(compact(raw.SerializeToString(), keep))
    for init in graph.graph.initializer:
        if init.name in state:
            init.raw_data = b""
    graph.metadata_props.add(key=LEARNED, value=json.dumps(sorted(state)))
    graph.metadata_props.add(key=RECORD, value=record_json(spec.record))
    return graph.SerializeToString()


#: The canonical graphs fedproof ships (``python -m fl_server.deploy graphs`` writes them).
SHIPPED_GRAPHS = (("fashion-mnist", "scatternet", 10), ("fashion-mnist", "cnn", 10), ("breast-cancer", "mlp", 2),
                  ("breast-cancer", "logistic", 2))


MANIFEST_LIFETIME = 365 * 24 * 3600
"""How long a device may install under a manifest (seconds)."""


def manifest_path(registry: Path, artifact: bytes) -> Path:
    return registry / f"{artifact.hex()}.manifest.json"


def next_sequence(registry: Path) -> int:
    """One above every manifest in the registry (and above the operator's own counter beside it)."""
    seen = [0]
    for path in registry.glob("*.manifest.json"):
        try:
            seen.append(SignedManifest.load(path).manifest.sequence)
        except Exception:  # noqa: BLE001 - a damaged file does not stop the next release
            continue
    counter = registry / "sequence"
    if counter.is_file():
        seen.append(int(counter.read_text().strip() or 0))
    return max(seen) + 1


def sign_manifest(registry: Path, key: DeploymentKey, contract: LedgerContract, artifact: bytes, source: bytes,
                  run_id: str, server_round: int, version: str,
                  derivation: Derivation, rollback: bool = False, lifetime: int = MANIFEST_LIFETIME,
                  profile: bytes = b"") -> SignedManifest:
    """Sign and write ``<artifact>.manifest.json`` with the next sequence number."""
    sequence = next_sequence(registry)
    manifest = DeploymentManifest(*contract.domain, artifact, source, run_id, server_round, version, sequence,
                                  int(time.time()) + lifetime, derivation, rollback, profile)
    signed = SignedManifest.signed_by(key, manifest)
    write_atomically(manifest_path(registry, artifact), signed.to_json().encode())
    write_atomically(registry / "sequence", f"{sequence}\n".encode())
    return signed


def rollback(registry: Path, key: DeploymentKey, contract: LedgerContract, artifact: bytes) -> SignedManifest:
    """An explicit, signed rollback statement: devices may go back to ``artifact`` (a deployed one) under it."""
    previous = SignedManifest.load(manifest_path(registry, artifact)).verify(key.public_key)
    return sign_manifest(registry, key, contract, artifact, previous.source_model_sha256, previous.run_id,
                         previous.round, previous.version + "+rollback", previous.derivation, rollback=True,
                         profile=previous.profile_sha256)


def deploy(run_path: Path, dataset: Dataset, registry: Path, contract: LedgerContract | None,
           server_round: int | None = None, settings: DeploySettings | None = None,
           key: DeploymentKey | None = None, app: Path | None = None) -> Deployment:
    """Quantize, check and publish the model of ``server_round`` (default: the run's final model). ``app``: the app
    project of a task that does not ship with fedproof, whose ``graphs/`` hold its canonical graphs."""
    settings = settings or DeploySettings()
    run_config = RunDirectory(run_path).config()
    run_id = run_config.run_id
    source = run_path / "model.safetensors" if server_round is None else run_path / "models" / \
        f"round-{server_round}.safetensors"
    if not source.is_file():
        raise DeployError(f"no model file {source}")
    weights = source.read_bytes()
    digest = hashlib.sha256(weights).digest()
    recorded = None
    if contract is not None:
        produced = [e for e in contract.round_events(model_hash=digest) if e.run_id == run_id_hash(run_id)
                    and e.model_hash != e.parent_model_hash]
        if not produced:
            raise DeployError(f"model {digest.hex()} of run {run_id!r} is not recorded on the ledger: refusing to deploy")
        recorded = produced[0]
        contract.require_writer("; deploy with the kit's operator directory (--operator <kit>/operator)")
    rng = np.random.default_rng(settings.seed)
    calibration = dataset.train_x[rng.choice(len(dataset.train_x), min(settings.calibration_size,
                                                                        len(dataset.train_x)), replace=False)]
    # the one derivation a device re-runs before it installs (fedproof.core.artifact)
    model_name = load_task(run_config.task).model_name(run_config.model)
    name, app_graphs = task_graph(run_config.task, model_name, dataset.num_classes, app)
    derivation = Derivation(name, settings.per_channel, hashlib.sha256(calibration_bytes(calibration)).digest())
    fp32, int8 = derive(derivation.graph, weights, calibration_bytes(calibration), settings.per_channel, app_graphs)
    # the server checks on all its cores (0: onnxruntime's default), a device runs on the threads it chooses
    acc32 = float((predict(session(fp32, threads=0), dataset.test_x) == dataset.test_y).mean())
    acc8 = float((predict(session(int8, threads=0), dataset.test_x) == dataset.test_y).mean())
    drop = 100 * (acc32 - acc8)
    if drop > settings.max_drop_pp:
        raise AccuracyDropTooLarge(
            f"int8 accuracy {acc8:.4f} is {drop:.2f} pp below fp32 {acc32:.4f} (allowed: {settings.max_drop_pp:g} pp); "
            "nothing was published"
        )
    artifact_hash = hashlib.sha256(int8).digest()
    # what devices compare their inputs with: the calibration images and the published model's predictions on them
    seen = dataset.train_x[rng.choice(len(dataset.train_x), min(settings.profile_size, len(dataset.train_x)),
                                      replace=False)]
    profile = json.dumps(build_profile(seen, predict(session(int8, threads=0), seen), dataset.num_classes,
                                       seed=settings.seed).to_dict()).encode()
    profile_hash = hashlib.sha256(profile).digest()
    # the chain first: a refused record (another account, another ledger) leaves nothing in the registry
    receipt: Receipt | None = None
    if contract is not None and recorded is not None:
        receipt = contract.record_deployment(digest, artifact_hash, recorded.run_id, recorded.round, TARGET)
    registry.mkdir(parents=True, exist_ok=True)
    artifact = registry / f"{artifact_hash.hex()}.onnx"
    write_atomically(artifact, int8)
    # what a device re-derives it from: the co-signed model file and the calibration images, both by hash
    (registry / "models").mkdir(exist_ok=True)
    write_atomically(registry / "models" / f"{digest.hex()}.safetensors", weights)
    (registry / "calibration").mkdir(exist_ok=True)
    write_atomically(registry / "calibration" / f"{derivation.calibration_sha256.hex()}.npy",
                     calibration_bytes(calibration))
    write_atomically(registry / f"{artifact_hash.hex()}.profile.json", profile)
    deployment = Deployment(
        artifact_sha256=artifact_hash.hex(), source_model_sha256=digest.hex(), run_id=run_id,
        round=recorded.round if recorded is not None else (server_round or 0), fp32_accuracy=acc32,
        int8_accuracy=acc8, fp32_bytes=len(fp32), int8_bytes=len(int8), settings=settings, artifact=str(artifact),
        tx_hash=receipt.tx_hash if receipt else "", block_number=receipt.block_number if receipt else 0,
        profile_sha256=profile_hash.hex(),
    )
    manifest = {**asdict(deployment), "target": TARGET, "quantization": {
        "format": "QDQ", "weights": "int8 per-channel" if settings.per_channel else "int8 per-tensor",
        "activations": "uint8", "calibration": f"{len(calibration)} training images, MinMax"},
        "chain_id": contract.chain_id if contract else 0, "contract": contract.address if contract else ""}
    write_atomically(registry / f"{artifact_hash.hex()}.json", (json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                  .encode())
    if contract is not None and recorded is not None and key is not None:
        bundles = registry / "bundles"
        bundles.mkdir(exist_ok=True)
        for path in sorted((run_path / "ledger").glob("round-*.json")):
            shutil.copyfile(path, bundles / f"{run_id}-{path.name}")
        sign_manifest(registry, key, contract, artifact_hash, digest, run_id, recorded.round,
                      f"{run_id}/round-{recorded.round}", derivation, profile=profile_hash)
    return deployment



def task_graph(task: str, model_name: str, num_classes: int, app: Path | None) -> tuple[str, tuple[Path, ...]]:
    """The canonical graph a model of ``task`` derives from, and where it is: fedproof's own for a built-in task;
    else the app's ``graphs/``, which must hold what the task's code exports today (a stale graph is refused here,
    before anything is published: devices would re-derive from it)."""
    if task in BUILT_IN:
        return graph_name(model_name, num_classes), ()
    name = graph_name(model_name, num_classes, load_task(task).name)
    if app is None:
        raise DeployError(f"task {task!r} is not built in: give its app (--app DIR), whose graphs/ devices re-derive "
                          "the artifact with")
    folders = (Path(app) / "graphs",)
    try:
        shipped = canonical_graph(name, folders)
    except DerivationError as exc:
        raise DeployError(f"{exc} (write them: fedproof graphs --app {app})") from exc
    if shipped != build_graph(model_name, num_classes, task):
        raise DeployError(f"{app}/graphs/{name}{APP_GRAPH_SUFFIX} is stale (task.py changed since it was written): "
                          f"fedproof graphs --app {app}, then reinstall the app on the devices")
    return name, folders


def write_app_graphs(app: Path, task: str) -> list[Path]:
    """Write the canonical graph of each model of ``task`` (a task of app ``app``) into ``app/graphs``: JSON, so that
    the app's FAB (and so the kits' pin) covers them."""
    spec = load_task(task)
    written = []
    for model_name in spec.models:
        name = graph_name(model_name, spec.num_classes, spec.name)
        path = Path(app) / "graphs" / f"{name}{APP_GRAPH_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, app_graph_bytes(name, build_graph(model_name, spec.num_classes, task)))
        written.append(path)
    return written


def write_graphs() -> list[Path]:
    """Write every shipped canonical graph into ``fedproof/core/graphs`` (after a change to a model or to torch)."""
    from fedproof.core.artifact import GRAPHS

    GRAPHS.mkdir(exist_ok=True)
    written = []
    for task, model_name, classes in SHIPPED_GRAPHS:
        path = GRAPHS / f"{graph_name(model_name, classes)}.onnx"
        write_atomically(path, build_graph(model_name, classes, task))
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["graphs"]:
        raise SystemExit("usage: python -m fl_server.deploy graphs   (rewrites fedproof/core/graphs/*.onnx)")
    for written in write_graphs():
        print(written)
