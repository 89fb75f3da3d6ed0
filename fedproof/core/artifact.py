"""The one derivation of a deployable artifact from a co-signed model, run by the server and re-run by each device.

Why a device re-derives: the deployment key sits with the operator, so a signature under it says only that the
operator chose an artifact. What the key holders co-signed is the fp32 model (its safetensors bytes). A device
therefore installs an artifact only if it can rebuild it itself from those bytes:

    artifact = quantize_int8(fill(canonical graph of the task, co-signed weights), calibration images, per_channel)

- The **canonical graph** is the task's ONNX graph with its learned initializers left empty
  (``fedproof/core/graphs/<model>-<classes>.onnx``). It ships with fedproof, not with a release: a device reads its
  own copy. ``tests/test_artifact.py`` proves each committed graph equals a fresh export of the task's model, as
  ``tests/test_contract.py`` does for the contract.
- ``fill`` puts the co-signed weights in (every learned tensor by name, dtype and shape, nothing else).
- ``quantize_int8`` is onnxruntime's static QDQ quantization with MinMax calibration. Weights are rounded from
  the co-signed ones; activation ranges are measured on the **calibration images**. The operator publishes these
  images beside the artifact, and their hash is in the signed manifest.

The operator still chooses which images calibrate (and per-channel or per-tensor weights). Both are published and
signed, so any device or auditor can re-run them. Neither can change a weight or the graph. Because every
activation range is the one the co-signed model reaches on real uint8 images, the operator can coarsen the int8
steps but cannot make the graph ignore its input. That leftover freedom is listed in README's threat table.

Imports numpy, onnx and onnxruntime only (never torch): this runs on an edge device.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from fedproof.base.errors import FedproofError
from fedproof.base.files import read_bounded
from fedproof.core.inference import INPUT
from fedproof.core.loaders import RecordSpec

GRAPHS = Path(__file__).resolve().parent / "graphs"
LEARNED = "fedproof.learned"
"""Metadata key of a canonical graph: the JSON list of its learned initializers (the model's state-dict keys)."""
RECORD = "fedproof.record"
"""Metadata key of a canonical graph: what one raw record is (its task's RecordSpec, as JSON): what a device
feeds it, and how it reads a table's rows or an image folder for ``edge predict``."""
MAX_GRAPH_BYTES = 16 << 20
MAX_CALIBRATION_IMAGES = 4096
MIN_CALIBRATION_IMAGES = 16
MAX_RECORD_VALUES = 1 << 16
"""Largest record (values per record) a calibration set may hold."""
#: The learned layers. The scattering extractor's matrix products (its fixed Fourier transforms) stay float: in int8
#: they moved 5% of the predictions.
QUANTIZED_OPS = ["Conv", "Gemm"]
SCALE_RTOL = 1e-4
"""How far a float initializer (an activation scale) of a shipped artifact may be from the device's own derivation:
calibration sums may round differently on another CPU. A weight in int8 must be equal."""


class DerivationError(FedproofError):
    """An artifact is not what the canonical derivation makes of its co-signed model (or cannot be derived)."""


APP_GRAPH_SUFFIX = ".onnx.json"
"""An app's canonical graphs (``<app>/graphs/<task>.<model>-<classes>.onnx.json``): JSON, so that the app's FAB, which
Flower builds from Python, TOML, Markdown and JSON files only, covers them and the kit's pin covers the FAB."""
_NAME = re.compile(r"(?:([a-z0-9][a-z0-9-]*)\.)?([A-Za-z_][A-Za-z0-9_]*)-([0-9]+)")


def graph_name(model: str, num_classes: int, task: str = "") -> str:
    """The canonical graph's name: the task's model and its number of classes; a task that does not ship with
    fedproof prefixes its name (``clinic.mlp-2``), and its graphs live in its app."""
    return f"{task}.{model}-{num_classes}" if task else f"{model}-{num_classes}"


def canonical_graph(name: str, app_graphs: Sequence[Path] = ()) -> bytes:
    """Canonical graph ``name`` (a name, never a path): fedproof's committed ``<model>-<classes>``, or an app's
    ``<task>.<model>-<classes>`` from the ``app_graphs`` folders (the device's own installed app, pinned)."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise DerivationError(f"{name!r} is not a canonical graph name ([<task>.]<model>-<classes>)")
    if match.group(1) is None:
        path = GRAPHS / f"{name}.onnx"
        if not path.is_file():
            raise DerivationError(f"no canonical graph {name!r} in {GRAPHS}: this fedproof cannot derive artifacts "
                                  "of that model (generate it with `python -m fl_server.deploy graphs`)")
        return read_bounded(path, MAX_GRAPH_BYTES, "canonical graph", DerivationError)
    for folder in app_graphs:
        path = Path(folder) / f"{name}{APP_GRAPH_SUFFIX}"
        if path.is_file():
            return read_app_graph(read_bounded(path, 2 * MAX_GRAPH_BYTES, "canonical graph", DerivationError), name)
    raise DerivationError(f"no canonical graph {name!r} in {', '.join(map(str, app_graphs)) or 'any app'}: pass the "
                          "app this model belongs to (--app DIR), whose graphs `fedproof graphs --app DIR` writes")


def app_graph_bytes(name: str, graph: bytes) -> bytes:
    return (json.dumps({"name": name, "graph": base64.b64encode(graph).decode()}, indent=0) + "\n").encode()


def read_app_graph(data: bytes, name: str) -> bytes:
    try:
        doc = json.loads(data)
        if doc["name"] != name:
            raise ValueError(f"it holds graph {doc['name']!r}")
        return base64.b64decode(doc["graph"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise DerivationError(f"the app's canonical graph {name!r} is not one ({exc})") from exc


def graph_record(name: str, app_graphs: Sequence[Path] = ()) -> RecordSpec:
    """What one raw record of canonical graph ``name`` is (its task's RecordSpec); images of 28 x 28 for a graph
    written before records were named."""
    model = onnx.load_from_string(canonical_graph(name, app_graphs))
    meta = {p.key: p.value for p in model.metadata_props}
    if RECORD not in meta:
        return RecordSpec(shape=(28, 28), dtype="uint8")
    try:
        doc = json.loads(meta[RECORD])
        return RecordSpec(tuple(int(v) for v in doc["shape"]), str(doc["dtype"]), tuple(doc.get("columns", ())),
                          str(doc.get("label", "label")), tuple(doc.get("classes", ())))
    except (ValueError, KeyError, TypeError) as exc:
        raise DerivationError(f"canonical graph {name!r} names its records badly ({exc})") from exc


def record_json(spec: RecordSpec) -> str:
    return json.dumps({"shape": list(spec.shape), "dtype": spec.dtype, "columns": list(spec.columns),
                       "label": spec.label, "classes": list(spec.classes)}, sort_keys=True)


def fill(graph: bytes, weights: dict[str, np.ndarray]) -> bytes:
    """The fp32 model: ``graph`` (canonical) with its learned initializers set to ``weights``, which must hold
    exactly those tensors, as float32 of the same shapes."""
    model = onnx.load_from_string(graph)
    meta = {p.key: p.value for p in model.metadata_props}
    if LEARNED not in meta:
        raise DerivationError("not a canonical graph: it does not name its learned tensors")
    learned = set(json.loads(meta[LEARNED]))
    if set(weights) != learned:
        raise DerivationError(f"the model's tensors {sorted(weights)} are not the graph's learned ones "
                              f"{sorted(learned)}")
    for init in model.graph.initializer:
        if init.name in learned:
            value = weights[init.name]
            if value.dtype != np.float32 or tuple(value.shape) != tuple(init.dims):
                raise DerivationError(f"tensor {init.name!r} is {value.dtype} {value.shape}, the graph needs float32 "
                                      f"{tuple(init.dims)}")
            init.raw_data = np.ascontiguousarray(value, "<f4").tobytes()
    del model.metadata_props[:]
    return model.SerializeToString()


class _Calibration(CalibrationDataReader):
    def __init__(self, records: np.ndarray, batch: int = 64) -> None:
        self._batches = iter([{INPUT: records[i : i + batch]} for i in range(0, len(records), batch)])

    def get_next(self):
        return next(self._batches, None)


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


def compact(data: bytes, keep: dict[str, str] | None = None) -> bytes:
    """The same graph without debugging baggage: the exporter's per-node stack traces, inferred shapes, long
    tensor names and unused opset imports (~15% of a 65k-parameter int8 model). Inputs and outputs keep their
    names, tensors in ``keep`` are renamed as it says; the result passes onnx's checker."""
    model = onnx.load_from_string(data)
    graph = model.graph
    del graph.value_info[:]
    del model.metadata_props[:]
    names: dict[str, str] = dict(keep or {})
    names.update({i.name: i.name for i in graph.input} | {o.name: o.name for o in graph.output})
    taken = set(names.values())

    def short(name: str) -> str:
        if not name:
            return name
        if name not in names:
            candidate = format(len(names), "x")
            while candidate in taken:
                candidate += "_"
            names[name] = candidate
            taken.add(candidate)
        return names[name]

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


def load_weights(data: bytes) -> dict[str, np.ndarray]:
    """A safetensors model file's tensors (the format carries no code)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise DerivationError(f"the source model is not a safetensors file ({exc})") from exc


def calibration_bytes(records: np.ndarray) -> bytes:
    """The calibration records as published: a ``.npy`` of the task's raw records (uint8 images, float32 rows)."""
    records = np.asarray(records)
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(records, np.uint8 if records.dtype == np.uint8 else np.float32),
            allow_pickle=False)
    return out.getvalue()


def load_calibration(data: bytes) -> np.ndarray:
    """Published calibration records, checked: a ``.npy`` (never pickled) of 16 to 4,096 raw records, uint8 or
    finite float32, of at most :data:`MAX_RECORD_VALUES` values each (the graph checks their shape)."""
    try:
        records = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise DerivationError(f"the calibration records are not a .npy array ({exc})") from exc
    if records.dtype not in (np.uint8, np.float32) or records.ndim < 2 or \
            not MIN_CALIBRATION_IMAGES <= len(records) <= MAX_CALIBRATION_IMAGES or \
            records[0].size > MAX_RECORD_VALUES or (records.dtype == np.float32 and not np.isfinite(records).all()):
        raise DerivationError(f"the calibration records are {records.dtype} {records.shape}, not "
                              f"{MIN_CALIBRATION_IMAGES} to {MAX_CALIBRATION_IMAGES} uint8 or finite float32 records")
    return records


def derive(graph: str, weights: bytes, calibration: bytes, per_channel: bool, app_graphs: Sequence[Path] = ()
           ) -> tuple[bytes, bytes]:
    """The fp32 model and the int8 artifact that canonical graph ``graph`` makes of the model file ``weights`` with
    the published ``calibration`` images."""
    fp32 = fill(canonical_graph(graph, app_graphs), load_weights(weights))
    records = load_calibration(calibration)
    tensor = onnx.load_from_string(fp32).graph.input[0].type.tensor_type
    shape = tuple(d.dim_value for d in tensor.shape.dim[1:])
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    if records.shape[1:] != shape or records.dtype != dtype:
        raise DerivationError(f"the calibration records are {records.dtype} {records.shape[1:]}; graph {graph!r} takes "
                              f"{dtype} {shape}")
    return fp32, quantize_int8(fp32, records, per_channel)


def check_derived(shipped: bytes, derived: bytes) -> None:
    """Raise :class:`DerivationError` unless ``shipped`` is ``derived``: the same bytes, or (calibrated on another
    CPU) the same graph and int8 weights, with activation scales within :data:`SCALE_RTOL` and uint8/int32
    zero points and biases within one step."""
    if shipped == derived:
        return
    try:
        ours, theirs = onnx.load_from_string(derived), onnx.load_from_string(shipped)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise DerivationError(f"the artifact is not an ONNX model ({type(exc).__name__})") from exc
    mine = {i.name: i for i in ours.graph.initializer}
    other = {i.name: i for i in theirs.graph.initializer}
    for model in (ours, theirs):
        del model.graph.initializer[:]
    if ours.SerializeToString(deterministic=True) != theirs.SerializeToString(deterministic=True):
        raise DerivationError("its graph is not the canonical graph of its model (operators, wiring or attributes "
                              "differ)")
    if set(mine) != set(other):
        raise DerivationError("its constant tensors are not the canonical graph's")
    for name, init in mine.items():
        a, b = numpy_helper.to_array(init), numpy_helper.to_array(other[name])
        if a.dtype != b.dtype or a.shape != b.shape:
            raise DerivationError(f"tensor {name!r} is {b.dtype} {b.shape}, the derivation makes {a.dtype} {a.shape}")
        if a.dtype == np.int8 or a.dtype.kind not in "iuf":
            close = np.array_equal(a, b)
        elif a.dtype.kind in "iu":
            close = bool(np.all(np.abs(a.astype(np.int64) - b.astype(np.int64)) <= 1))
        else:
            close = bool(np.allclose(a, b, rtol=SCALE_RTOL, atol=0.0))
        if not close:
            raise DerivationError(f"tensor {name!r} differs from what the co-signed model gives")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
