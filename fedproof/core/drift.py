"""Drift on the device: is what a deployed model sees still like what it was calibrated on? numpy only.

The operator's ``deploy`` builds a :class:`ReferenceProfile` from server-side calibration images and the model's
predictions on them: a projection of the inputs onto their ``k`` principal components (``k`` summary features
instead of 784 pixels), a reference sample of those features, and the predicted-class distribution. A device
compares a window of what it recently classified against it with three tests, each a p-value:

* **KS**: a two-sample Kolmogorov-Smirnov test per feature against the reference sample, Bonferroni-corrected
  over the ``k`` features (a window is flagged when the smallest p-value is below ``alpha / k``), so the
  false-alarm rate per window stays at most ``alpha``;
* **MMD**: the unbiased squared maximum mean discrepancy of the whole feature vectors (RBF kernel, bandwidth the
  reference sample's median pairwise distance), with a permutation p-value;
* **labels**: a chi-square statistic of the window's predicted classes against the reference distribution,
  with a Monte-Carlo p-value (multinomial draws from the reference), which sees a class disappear or take over.

Nothing here needs torch or scipy: the device has numpy and onnxruntime. The randomness of permutations and
draws only sets the p-values' Monte-Carlo error; it protects nobody's privacy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedproof.base.errors import FedproofError


class ProfileError(FedproofError):
    """A reference profile is malformed or does not fit the inputs it is asked to judge."""


MAX_FEATURES, MAX_SAMPLE, MAX_INPUT = 64, 4096, 1 << 16


@dataclass(frozen=True)
class ReferenceProfile:
    mean: np.ndarray
    """(d,) the calibration inputs' mean, subtracted before projecting."""
    projection: np.ndarray
    """(d, k) the calibration inputs' top-k principal directions."""
    sample: np.ndarray
    """(m, k) the projected features of m calibration images: the KS and MMD tests' reference."""
    class_freq: np.ndarray
    """(C,) the model's predicted-class frequencies on the calibration images."""
    bandwidth: float
    """RBF bandwidth: the reference sample's median pairwise distance."""

    def __post_init__(self) -> None:
        d, k = self.projection.shape if self.projection.ndim == 2 else (0, 0)
        if not (0 < d <= MAX_INPUT and 0 < k <= MAX_FEATURES and self.mean.shape == (d,)
                and self.sample.ndim == 2 and self.sample.shape[1] == k and 2 <= self.sample.shape[0] <= MAX_SAMPLE
                and self.class_freq.ndim == 1 and self.class_freq.size >= 2):
            raise ProfileError("a reference profile needs a (d,) mean, a (d, k) projection, an (m, k) sample and "
                               "a class distribution")
        arrays = (self.mean, self.projection, self.sample, self.class_freq)
        if not all(np.all(np.isfinite(a)) for a in arrays) or not (math.isfinite(self.bandwidth) and
                                                                   self.bandwidth > 0):
            raise ProfileError("a reference profile holds NaN, infinite or non-positive values")
        if np.any(self.class_freq < 0) or not math.isclose(float(self.class_freq.sum()), 1.0, abs_tol=1e-6):
            raise ProfileError("the reference class distribution is not a distribution")

    @property
    def features(self) -> int:
        return self.projection.shape[1]

    def project(self, images: np.ndarray) -> np.ndarray:
        """(n, k) summary features of ``images`` (any shape whose trailing axes flatten to d; uint8 pixels are
        scaled to 0..1 as in calibration)."""
        flat = np.asarray(images).reshape(len(images), -1)
        if flat.shape[1] != self.mean.shape[0]:
            raise ProfileError(f"inputs of {flat.shape[1]} values; the profile was built for {self.mean.shape[0]}")
        x = flat.astype(np.float64) / (255.0 if flat.dtype == np.uint8 else 1.0)
        return (x - self.mean) @ self.projection

    def to_dict(self) -> dict:
        """Plain lists and numbers (what a signed manifest carries as JSON)."""
        return {"mean": self.mean.tolist(), "projection": self.projection.tolist(), "sample": self.sample.tolist(),
                "class_freq": self.class_freq.tolist(), "bandwidth": self.bandwidth}

    @classmethod
    def from_dict(cls, doc: dict) -> ReferenceProfile:
        try:
            return cls(np.asarray(doc["mean"], dtype=np.float64), np.asarray(doc["projection"], dtype=np.float64),
                       np.asarray(doc["sample"], dtype=np.float64), np.asarray(doc["class_freq"], dtype=np.float64),
                       float(doc["bandwidth"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"not a reference profile: {exc}") from exc


def build_profile(images: np.ndarray, predictions: np.ndarray, num_classes: int, components: int = 16,
                  sample: int = 500, seed: int = 0) -> ReferenceProfile:
    """The profile of calibration ``images`` and the model's ``predictions`` on them (server side: numpy too).

    The principal directions are fitted on one half of the images and the reference sample drawn from the
    other: projected onto directions fitted to themselves, images show more spread along them than any new
    image does, and the KS test would flag that as drift.
    """
    flat = np.asarray(images).reshape(len(images), -1)
    x = flat.astype(np.float64) / (255.0 if flat.dtype == np.uint8 else 1.0)
    if len(x) < 4 * components or len(predictions) != len(x):
        raise ProfileError(f"{len(x)} calibration images for {components} components: too few, or predictions "
                           "do not match")
    order = np.random.default_rng(seed).permutation(len(x))
    fit, held = x[order[: len(x) // 2]], x[order[len(x) // 2:]][:sample]
    mean = fit.mean(axis=0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    projection = vt[:components].T
    reference = (held - mean) @ projection
    counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=num_classes)[:num_classes]
    freq = (counts + 0.5) / (counts + 0.5).sum()  # no class at exactly 0: a chi-square needs every expectation > 0
    return ReferenceProfile(mean, projection, reference, freq, _median_distance(reference))


@dataclass(frozen=True)
class DriftResult:
    window: int
    ks_p_values: tuple[float, ...]
    """Per feature, uncorrected."""
    ks_p: float
    """Bonferroni-corrected: min(1, k * smallest per-feature p-value)."""
    mmd: float
    mmd_p: float
    labels_chi2: float
    labels_p: float
    alpha: float

    @property
    def covariate_drift(self) -> bool:
        return self.ks_p < self.alpha or self.mmd_p < self.alpha

    @property
    def label_drift(self) -> bool:
        return self.labels_p < self.alpha

    @property
    def drift(self) -> bool:
        return self.covariate_drift or self.label_drift


def check_window(profile: ReferenceProfile, images: np.ndarray, predictions: np.ndarray, alpha: float = 0.01,
                permutations: int = 200, rng: np.random.Generator | None = None) -> DriftResult:
    """All three tests on one window of recent inputs and the model's predictions for them."""
    rng = rng or np.random.default_rng()
    predictions = np.asarray(predictions)
    if len(predictions) != len(images) or len(images) < 2 or np.any(predictions < 0) \
            or np.any(predictions >= profile.class_freq.size):
        raise ProfileError(f"a window of {len(images)} inputs needs as many predictions, each a class of the profile")
    window = profile.project(images)
    p_values = tuple(ks_p_value(profile.sample[:, j], window[:, j]) for j in range(profile.features))
    mmd, mmd_p = mmd_test(profile.sample, window, profile.bandwidth, permutations, rng)
    chi2, labels_p = label_test(profile.class_freq, predictions, permutations, rng)
    return DriftResult(len(window), p_values, min(1.0, profile.features * min(p_values)), mmd, mmd_p, chi2, labels_p,
                       alpha)


def ks_p_value(reference: np.ndarray, window: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov: the asymptotic p-value of the largest gap between the two empirical CDFs."""
    a, b = np.sort(reference), np.sort(window)
    points = np.concatenate([a, b])
    gap = float(np.max(np.abs(np.searchsorted(a, points, side="right") / len(a)
                              - np.searchsorted(b, points, side="right") / len(b))))
    n = len(a) * len(b) / (len(a) + len(b))
    return kolmogorov_sf((math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * gap)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution: 2 sum_j (-1)^(j-1) exp(-2 j^2 x^2)."""
    if x < 0.2:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def mmd_test(reference: np.ndarray, window: np.ndarray, bandwidth: float, permutations: int,
             rng: np.random.Generator) -> tuple[float, float]:
    """Unbiased MMD^2 (RBF kernel) between the samples, and its permutation p-value."""
    pooled = np.concatenate([reference, window])
    squared = np.sum(pooled ** 2, axis=1)
    kernel = np.exp(-np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0) / (2 * bandwidth ** 2))
    m = len(reference)

    def statistic(order: np.ndarray) -> float:
        k = kernel[np.ix_(order, order)]
        x, y, n = k[:m, :m], k[m:, m:], len(order) - m
        return float((x.sum() - np.trace(x)) / (m * (m - 1)) + (y.sum() - np.trace(y)) / (n * (n - 1))
                     - 2 * k[:m, m:].mean())

    observed = statistic(np.arange(len(pooled)))
    exceed = sum(statistic(rng.permutation(len(pooled))) >= observed for _ in range(permutations))
    return observed, (1 + exceed) / (1 + permutations)


def label_test(reference: np.ndarray, predictions: np.ndarray, draws: int,
               rng: np.random.Generator) -> tuple[float, float]:
    """Chi-square of the predicted classes against the reference distribution, and its Monte-Carlo p-value."""
    n = len(predictions)
    expected = reference * n
    counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=len(reference))[:len(reference)]
    observed = float(np.sum((counts - expected) ** 2 / expected))
    simulated = rng.multinomial(n, reference, size=draws)
    chi2 = np.sum((simulated - expected) ** 2 / expected, axis=1)
    return observed, float((1 + np.sum(chi2 >= observed)) / (1 + draws))


def _median_distance(sample: np.ndarray) -> float:
    squared = np.sum(sample ** 2, axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * sample @ sample.T, 0))
    upper = distances[np.triu_indices(len(sample), k=1)]
    return float(np.median(upper)) or 1.0
