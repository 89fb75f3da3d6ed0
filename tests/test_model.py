from __future__ import annotations

import torch
from torch import nn

from fedproof.model import FashionCNN, count_parameters, make_model


def test_output_shape_and_size() -> None:
    model = make_model()
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert 25_000 <= count_parameters(model) <= 100_000


def test_no_batchnorm() -> None:
    """Batch statistics mix samples; DP-SGD (Opacus) refuses them."""
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in make_model().modules())


def test_seeded_initialisation() -> None:
    a, b, c = make_model(seed=1), make_model(seed=1), make_model(seed=2)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["fc1.weight"], c.state_dict()["fc1.weight"])


def test_num_classes() -> None:
    assert FashionCNN(num_classes=3)(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
