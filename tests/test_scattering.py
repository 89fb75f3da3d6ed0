"""Our ONNX-exportable scattering against kymatio's own (the reference: FFT-based, from its torch frontend)."""

from __future__ import annotations

import pytest
import torch

from fedproof.core.scattering import Scattering2D


@pytest.fixture(scope="module")
def kymatio_scattering():
    # kymatio's 2D torch frontend imports on its own; `import kymatio.torch` would also import its 3D module,
    # which fails on SciPy >= 1.17 (scipy.special.sph_harm is gone)
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    return ScatteringTorch2D


@pytest.mark.parametrize(("J", "size"), [(2, 28), (3, 32), (1, 16)])
def test_matches_kymatio(kymatio_scattering, J: int, size: int) -> None:
    torch.manual_seed(J)
    images = torch.rand(16, size, size)
    reference = kymatio_scattering(J=J, shape=(size, size))(images)
    ours = Scattering2D(J=J, size=size)(images.unsqueeze(1))
    assert ours.shape == reference.shape == (16, Scattering2D(J=J, size=size).channels, size // 2**J, size // 2**J)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4)


def test_differs_from_kymatio_when_an_image_changes(kymatio_scattering) -> None:
    """The comparison above can fail: one pixel moved changes the coefficients."""
    images = torch.rand(2, 28, 28)
    reference = kymatio_scattering(J=2, shape=(28, 28))(images)
    moved = images.clone()
    moved[0, 14, 14] += 0.5
    assert not torch.allclose(Scattering2D()(moved.unsqueeze(1)), reference, atol=1e-5, rtol=1e-4)


def test_no_state_and_translation_stability() -> None:
    scattering = Scattering2D()
    assert not scattering.state_dict() and not list(scattering.parameters())
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:18, 10:18] = 1.0
    shifted = torch.roll(image, shifts=1, dims=3)
    a, b = scattering(image), scattering(shifted)
    assert (a - b).norm() < 0.25 * a.norm()  # a one-pixel shift barely moves the features


def test_refuses_a_size_it_cannot_subsample() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Scattering2D(J=2, size=30)
