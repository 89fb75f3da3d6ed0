"""Drift detection on the device: how often each test flags a window, per shift, on the real Fashion-MNIST.

The profile is built as `fedproof deploy` builds it (2,000 training images, the model's predictions on them);
windows are drawn from the held-out test set, unchanged (the false-alarm rate: the baseline) or shifted: brighter
(+30 of 255), lower contrast (x0.7 around the mean), rotated by 15 degrees, or without one class (T-shirt: a
label shift). The model is the default ScatterNet with its head trained here for two epochs without DP; the
predictions are fp32 torch (int8 on a device agrees with it on 99.7% of images).

    python benchmarks/drift.py [--windows 30] [--alpha 0.01]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage

from deploy import train
from fedproof.core.data import load_dataset
from fedproof.core.drift import build_profile, check_window
from fedproof.core.features import features

SHIFTS = {
    "none (false alarms)": lambda x: x,
    "brightness +30": lambda x: np.clip(x.astype(np.int16) + 30, 0, 255).astype(np.uint8),
    "contrast x0.7": lambda x: np.clip((x - x.mean()) * 0.7 + x.mean(), 0, 255).astype(np.uint8),
    "rotation 15 deg": lambda x: ndimage.rotate(x, 15, axes=(1, 2), reshape=False, order=1).astype(np.uint8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=30, help="windows per shift and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--permutations", type=int, default=100)
    args = parser.parse_args()
    data = load_dataset()
    model = train(data)

    def classify(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.head(features(model, images)).argmax(1).numpy()

    rng = np.random.default_rng(0)
    seen = data.train_x[rng.choice(len(data.train_x), 2000, replace=False)]
    profile = build_profile(seen, classify(seen), data.num_classes)
    sets = {name: (shift(data.test_x), None) for name, shift in SHIFTS.items()}
    sets = {name: (x, classify(x)) for name, (x, _) in sets.items()}
    kept = data.test_y != 0
    sets["class 0 removed (label shift)"] = (data.test_x[kept], sets["none (false alarms)"][1][kept])

    print(f"\nShare of windows flagged (alpha {args.alpha:g} per test; {args.windows} windows per row), "
          "real Fashion-MNIST test images; baseline = no shift\n")
    print("| shift | window | KS (Bonferroni) | MMD | predicted classes | any | ms per window |")
    print("|---|---|---|---|---|---|---|")
    for name, (x, predicted) in sets.items():
        for size in args.sizes:
            flags, started = [], time.perf_counter()
            for _ in range(args.windows):
                idx = rng.choice(len(x), size, replace=False)
                r = check_window(profile, x[idx], predicted[idx], args.alpha, args.permutations, rng)
                flags.append((r.ks_p < args.alpha, r.mmd_p < args.alpha, r.label_drift, r.drift))
            ms = 1000 * (time.perf_counter() - started) / args.windows
            rates = np.mean(flags, axis=0)
            print(f"| {name} | {size} | {rates[0]:.2f} | {rates[1]:.2f} | {rates[2]:.2f} | {rates[3]:.2f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
