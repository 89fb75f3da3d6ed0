"""Drift tests on generated data: each fires on the shift it is for and stays quiet without one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedproof.core.drift import ProfileError, ReferenceProfile, build_profile, check_window, kolmogorov_sf

DIM, CLASSES = 64, 4
CENTRES = np.random.default_rng(1).normal(0, 1, size=(CLASSES, DIM))


def draw(n: int, rng: np.random.Generator, classes=range(CLASSES), brightness: float = 0.0):
    """Images of a class mixture (pixels 0..1) and the 'model's' predictions (nearest centre)."""
    labels = rng.choice(list(classes), size=n)
    x = 0.5 + 0.1 * (CENTRES[labels] + rng.normal(0, 1, size=(n, DIM))) + brightness
    predictions = np.argmin(((x[:, None, :] - 0.5 - 0.1 * CENTRES[None]) ** 2).sum(-1), axis=1)
    return x, predictions


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    x, predictions = draw(2000, np.random.default_rng(2))
    return build_profile(x, predictions, CLASSES, components=8, sample=300)


def windows(profile, count: int, seed: int, **shift):
    rng = np.random.default_rng(seed)
    return [check_window(profile, *draw(150, rng, **shift), alpha=0.01, permutations=100, rng=rng)
            for _ in range(count)]


def test_no_shift_rarely_alarms(profile) -> None:
    results = windows(profile, 10, seed=3)
    assert sum(r.drift for r in results) <= 1
    assert all(0 < r.ks_p <= 1 and 0 < r.mmd_p <= 1 and 0 < r.labels_p <= 1 for r in results)


def test_a_brightness_shift_fires_both_covariate_tests(profile) -> None:
    results = windows(profile, 3, seed=4, brightness=0.1)
    assert all(r.covariate_drift and r.ks_p < 0.01 and r.mmd_p < 0.02 for r in results)  # MMD: the permutation floor
    subtle = windows(profile, 3, seed=4, brightness=0.03)
    assert all(r.ks_p < 0.05 for r in subtle)  # the per-feature test sees a shift of 3% of the pixel range


def test_a_class_removed_fires_the_label_test(profile) -> None:
    results = windows(profile, 3, seed=5, classes=range(1, CLASSES))
    assert all(r.label_drift for r in results)


def test_the_kolmogorov_tail_matches_known_values() -> None:
    assert kolmogorov_sf(1.358) == pytest.approx(0.05, abs=1e-3)  # the 5% critical value
    assert kolmogorov_sf(1.628) == pytest.approx(0.01, abs=1e-3)
    assert kolmogorov_sf(0.1) == 1.0 and kolmogorov_sf(5.0) < 1e-20


def test_a_profile_survives_json_and_refuses_what_does_not_fit(profile) -> None:
    again = ReferenceProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    x, predictions = draw(150, np.random.default_rng(6))
    assert np.allclose(again.project(x), profile.project(x))
    with pytest.raises(ProfileError):
        again.project(x[:, :10])  # inputs of another size
    with pytest.raises(ProfileError):
        check_window(again, x, predictions + CLASSES)  # classes the profile does not know
    broken = profile.to_dict() | {"class_freq": [0.5, 0.6, 0.0, 0.0]}
    with pytest.raises(ProfileError):
        ReferenceProfile.from_dict(broken)
    with pytest.raises(ProfileError):
        ReferenceProfile.from_dict(profile.to_dict() | {"bandwidth": float("nan")})
