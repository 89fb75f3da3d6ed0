from __future__ import annotations

import pytest
import torch
from torch import nn

from fedproof.core.tasks.fashion_mnist import FashionMNIST

MODELS = FashionMNIST.models
from fedproof.base.errors import ConfigError
from fedproof.core.model import count_parameters, make_model


@pytest.mark.parametrize("name", MODELS)
def test_output_shape_and_size(name: str) -> None:
    model = make_model(name)
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert 25_000 <= count_parameters(model) <= 100_000
    assert count_parameters(model.extractor) == 0 and not model.extractor.state_dict()  # fixed: nothing to exchange
    assert set(model.state_dict()) == {f"head.{k}" for k in model.head.state_dict()}


@pytest.mark.parametrize("name", MODELS)
def test_no_batchnorm(name: str) -> None:
    """Batch statistics mix samples; DP-SGD (Opacus) refuses them."""
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in make_model(name).modules())


@pytest.mark.parametrize("name", MODELS)
def test_seeded_initialisation(name: str) -> None:
    a, b, c = make_model(name, seed=1), make_model(name, seed=1), make_model(name, seed=2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_num_classes(name: str) -> None:
    assert make_model(name, num_classes=3)(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        make_model("resnet")


@pytest.mark.parametrize("name", MODELS)
def test_a_server_cannot_replace_the_fixed_extractor(name: str) -> None:
    """The global model a client loads holds only the head: weights for the extractor (a server trying to swap the
    features the privacy analysis assumes fixed) are refused, as is a head missing a tensor."""
    model = make_model(name)
    arrays = model.state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**arrays, "extractor.phi0": torch.zeros(36, 72)})
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(dict(list(arrays.items())[1:]))
