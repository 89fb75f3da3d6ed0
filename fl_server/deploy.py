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
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from safetensors.numpy import load as safetensors_load
from torch import nn

from fedproof.data import Dataset
from fedproof.drift import build_profile
from fedproof.errors import FedproofError
from fedproof.files import write_atomically
from fedproof.inference import predict, session
from fedproof.model import make_model
from fedproof.rundir import RunDirectory
from fedproof.task import PIXEL_MEAN, PIXEL_STD
from ledger.contract import LedgerContract, Receipt
from ledger.manifest import DeploymentKey, DeploymentManifest, SignedManifest
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
    """uint8 images in, logits out: the same standardisation as training (fedproof.task.to_tensors)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32).div(255.0).sub(PIXEL_MEAN).div(PIXEL_STD).unsqueeze(1)
        return self.model(x)


def load_model_file(path: Path, num_classes: int = 10, model_name: str = "scatternet") -> tuple[nn.Module, bytes]:
    """The torch model (architecture ``model_name``) held by a safetensors model file, and the SHA-256 of its exact
    bytes."""
    data = Path(path).read_bytes()
    model = make_model(model_name, num_classes)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in safetensors_load(data).items()})
    return model.eval(), hashlib.sha256(data).digest()


def export_onnx(model: nn.Module) -> bytes:
    """One self-contained ONNX file with a dynamic batch dimension."""
    wrapped = _Standardised(model).eval()
    example = torch.zeros((2, 28, 28), dtype=torch.uint8)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" x4, harmless
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "model.onnx"
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["images"],
                                    output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    verbose=False)
        program.save(str(path), external_data=False)
        return compact(path.read_bytes())


class _Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch: int = 64) -> None:
        self._batches = iter([{"images": images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._batches, None)


#: The learned layers. The scattering extractor's matrix products (its fixed Fourier transforms) stay float: in int8
#: they moved 5% of the predictions.
QUANTIZED_OPS = ["Conv", "Gemm"]


def quantize_int8(fp32: bytes, calibration: np.ndarray, per_channel: bool = True) -> bytes:
    """Static int8 quantization in QDQ format of the learned layers: int8 weights (per channel), uint8 activations,
    MinMax calibration."""
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS)
        return compact(out.read_bytes())


def compact(data: bytes) -> bytes:
    """The same graph without debugging baggage: the exporter's per-node stack traces, inferred shapes, long
    tensor names and unused opset imports (~15% of a 65k-parameter int8 model). Inputs and outputs keep
    their names; the result passes onnx's checker."""
    model = onnx.load_from_string(data)
    graph = model.graph
    del graph.value_info[:]
    del model.metadata_props[:]
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))

    for init in graph.initializer:
        init.name, init.doc_string = short(init.name), ""
    for node in graph.node:
        node.name, node.doc_string = "", ""
        del node.metadata_props[:]
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    used = {node.domain for node in graph.node} | {""}
    opsets = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    model.producer_name, model.producer_version, model.doc_string = "fedproof", "", ""
    onnx.checker.check_model(model)
    return model.SerializeToString()


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
                  run_id: str, server_round: int, version: str, rollback: bool = False,
                  lifetime: int = MANIFEST_LIFETIME, profile: bytes = b"") -> SignedManifest:
    """Sign and write ``<artifact>.manifest.json`` with the next sequence number."""
    sequence = next_sequence(registry)
    manifest = DeploymentManifest(*contract.domain, artifact, source, run_id, server_round, version, sequence,
                                  int(time.time()) + lifetime, rollback, profile)
    signed = key.sign(manifest)
    write_atomically(manifest_path(registry, artifact), signed.to_json().encode())
    write_atomically(registry / "sequence", f"{sequence}\n".encode())
    return signed


def rollback(registry: Path, key: DeploymentKey, contract: LedgerContract, artifact: bytes) -> SignedManifest:
    """An explicit, signed rollback statement: devices may go back to ``artifact`` (a deployed one) under it."""
    previous = SignedManifest.load(manifest_path(registry, artifact)).verify(key.public_key)
    return sign_manifest(registry, key, contract, artifact, previous.source_model_sha256, previous.run_id,
                         previous.round, previous.version + "+rollback", rollback=True,
                         profile=previous.profile_sha256)


def deploy(run_path: Path, dataset: Dataset, registry: Path, contract: LedgerContract | None,
           server_round: int | None = None, settings: DeploySettings | None = None,
           key: DeploymentKey | None = None) -> Deployment:
    """Quantize, check and publish the model of ``server_round`` (default: the run's final model)."""
    settings = settings or DeploySettings()
    run_config = RunDirectory(run_path).config()
    run_id = run_config.run_id
    source = run_path / "model.safetensors" if server_round is None else run_path / "models" / \
        f"round-{server_round}.safetensors"
    if not source.is_file():
        raise DeployError(f"no model file {source}")
    model, digest = load_model_file(source, dataset.num_classes, run_config.model)
    recorded = None
    if contract is not None:
        produced = [e for e in contract.round_events(model_hash=digest) if e.run_id == run_id_hash(run_id)
                    and e.model_hash != e.parent_model_hash]
        if not produced:
            raise DeployError(f"model {digest.hex()} of run {run_id!r} is not recorded on the ledger: refusing to deploy")
        recorded = produced[0]
    rng = np.random.default_rng(settings.seed)
    calibration = dataset.train_x[rng.choice(len(dataset.train_x), min(settings.calibration_size,
                                                                        len(dataset.train_x)), replace=False)]
    fp32 = export_onnx(model)
    int8 = quantize_int8(fp32, calibration, settings.per_channel)
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
    registry.mkdir(parents=True, exist_ok=True)
    artifact = registry / f"{artifact_hash.hex()}.onnx"
    write_atomically(artifact, int8)
    # what devices compare their inputs with: the calibration images and the published model's predictions on them
    seen = dataset.train_x[rng.choice(len(dataset.train_x), min(settings.profile_size, len(dataset.train_x)),
                                      replace=False)]
    profile = json.dumps(build_profile(seen, predict(session(int8, threads=0), seen), dataset.num_classes,
                                       seed=settings.seed).to_dict()).encode()
    profile_hash = hashlib.sha256(profile).digest()
    write_atomically(registry / f"{artifact_hash.hex()}.profile.json", profile)
    receipt: Receipt | None = None
    if contract is not None and recorded is not None:
        receipt = contract.record_deployment(digest, artifact_hash, recorded.run_id, recorded.round, TARGET)
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
                      f"{run_id}/round-{recorded.round}", profile=profile_hash)
    return deployment

