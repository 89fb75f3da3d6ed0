"""The derivation a device re-runs (fedproof.core.artifact): the committed canonical graphs are the task's models, and
what check_derived lets through is the same graph and weights, with only calibration rounding left free."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import save as save_numpy
from safetensors.torch import save as save_torch

from fedproof.core.artifact import (
    DerivationError,
    calibration_bytes,
    canonical_graph,
    check_derived,
    derive,
    fill,
    graph_name,
)
from fedproof.core.model import make_model
from fl_server.deploy import SHIPPED_GRAPHS, build_graph

CALIBRATION = calibration_bytes(np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8))


@pytest.fixture(scope="module")
def cnn():
    """A cnn's weights, and its fp32 and int8 artifacts (the cnn graph is the small one)."""
    weights = save_torch(make_model("cnn", 10, seed=5).state_dict())
    fp32, int8 = derive("cnn-10", weights, CALIBRATION, True)
    return weights, fp32, int8


@pytest.mark.slow  # each export takes seconds: `make test` and CI run them
@pytest.mark.parametrize("task,model_name,classes", SHIPPED_GRAPHS)
def test_each_committed_graph_is_a_fresh_export_of_its_model(task: str, model_name: str, classes: int) -> None:
    """As for the contract: the graph a device trusts is the one the task's code exports today."""
    assert canonical_graph(graph_name(model_name, classes)) == build_graph(model_name, classes, task), (
        f"fedproof/core/graphs/{graph_name(model_name, classes)}.onnx is stale: run `python -m fl_server.deploy graphs`")


def test_the_derived_fp32_model_computes_the_torch_model() -> None:
    import torch

    from fedproof.core.inference import session
    from fedproof.core.features import to_tensors

    model = make_model("cnn", 10, seed=2).eval()
    fp32 = fill(canonical_graph("cnn-10"), {k: v.numpy() for k, v in model.state_dict().items()})
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    with torch.no_grad():
        expected = model(to_tensors(images, np.zeros(8))[0]).numpy()
    np.testing.assert_allclose(session(fp32).run(None, {"images": images})[0], expected, rtol=1e-4, atol=1e-5)


def test_the_derivation_is_deterministic(cnn) -> None:
    weights, fp32, int8 = cnn
    assert derive("cnn-10", weights, CALIBRATION, True) == (fp32, int8)
    assert derive("cnn-10", weights, CALIBRATION, False)[1] != int8  # the manifest's settings matter


def test_fill_takes_exactly_the_learned_tensors() -> None:
    graph = canonical_graph("cnn-10")
    state = {k: v.numpy() for k, v in make_model("cnn", 10).state_dict().items()}
    with pytest.raises(DerivationError, match="not the graph's learned ones"):
        fill(graph, {**state, "extra": np.zeros(1, np.float32)})
    with pytest.raises(DerivationError, match="not the graph's learned ones"):
        fill(graph, {k: v for k, v in state.items() if k != "head.fc2.bias"})
    with pytest.raises(DerivationError, match="needs float32"):
        fill(graph, {**state, "head.fc2.bias": np.zeros(11, np.float32)})
    with pytest.raises(DerivationError, match="needs float32"):
        fill(graph, {**state, "head.fc2.bias": state["head.fc2.bias"].astype(np.float64)})
    with pytest.raises(DerivationError, match="not the graph's learned ones"):  # another task's model
        derive("scatternet-10", save_numpy(state), CALIBRATION, True)


@pytest.mark.parametrize("name", ["../../etc/passwd", "cnn-x", "nothing-10", "cnn-11"])
def test_a_graph_is_named_never_a_path(name: str) -> None:
    with pytest.raises(DerivationError):
        canonical_graph(name)


@pytest.mark.parametrize("data", [b"", b"not npy", calibration_bytes(np.zeros((8, 28, 28), np.uint8)),
                                  calibration_bytes(np.zeros((32, 28, 27), np.uint8)),
                                  CALIBRATION.replace(b"'|u1'", b"'<i1'"),  # int8 pixels
                                  CALIBRATION[:-100]])  # truncated
def test_calibration_images_are_checked(data: bytes) -> None:
    """Refused when read, or (records of another shape than the graph's) when the graph is calibrated with them."""
    with pytest.raises(DerivationError):
        derive("cnn-10", save_torch(make_model("cnn", 10, seed=5).state_dict()), data, True)


def _changed(int8: bytes, pick, change) -> bytes:
    model = onnx.load_from_string(int8)
    init = next(i for i in model.graph.initializer if pick(numpy_helper.to_array(i)))
    values = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(change(values), init.name))
    return model.SerializeToString()


def test_only_calibration_rounding_is_tolerated(cnn) -> None:
    _, _, int8 = cnn
    check_derived(int8, int8)
    is_scale = lambda a: a.dtype == np.float32 and a.ndim == 0  # noqa: E731 - an activation's scale

    def nudge(a: np.ndarray) -> np.ndarray:
        return (a * np.float32(1 + 1e-6)).astype(a.dtype)

    check_derived(_changed(int8, is_scale, nudge), int8)  # another CPU's rounding
    is_bias = lambda a: a.dtype == np.int32 and a.ndim == 1  # noqa: E731
    check_derived(_changed(int8, is_bias, lambda a: a + 1), int8)
    refused = {
        "a scale": _changed(int8, is_scale, lambda a: (a * np.float32(1.01)).astype(a.dtype)),
        "an int8 weight": _changed(int8, lambda a: a.dtype == np.int8, lambda a: np.where(a == a.flat[0], a ^ 1, a)
                                   .astype(np.int8)),
        "a bias": _changed(int8, is_bias, lambda a: a + 2),
        "bytes": b"\x08\x07garbage",
    }
    for what, artifact in refused.items():
        with pytest.raises(DerivationError):
            check_derived(artifact, int8)
            pytest.fail(f"{what} changed, and it passed")
    model = onnx.load_from_string(int8)
    node = next(n for n in model.graph.node if n.op_type == "MaxPool")
    node.op_type = "AveragePool"
    with pytest.raises(DerivationError, match="not the canonical graph"):
        check_derived(model.SerializeToString(), int8)
