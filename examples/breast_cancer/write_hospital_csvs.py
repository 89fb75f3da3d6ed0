"""Write the breast-cancer task's rows as one CSV per hospital: what each site would hold, in the format a device
reads with ``fedproof client --task breast-cancer --data <site>.csv``.

    python examples/breast_cancer/write_hospital_csvs.py OUT_DIR [--hospitals 5] [--shifted]

It also writes ``patients.csv``: the central test rows (no hospital trained on them), for ``edge predict``; and with
``--shifted``, ``shifted.csv``: the same rows with every size feature scaled by 1.3 (another scanner's calibration),
for a drift check.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from fedproof.core.client_data import load_client_data
from fedproof.core.config import RunConfig
from fedproof.core.task import load_task


def write(path: Path, columns: tuple[str, ...], label: str, classes: tuple[str, ...], x: np.ndarray,
          y: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow([*columns, label])
        for row, target in zip(x, y):
            out.writerow([f"{v:.6g}" for v in row] + [classes[target]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hospitals", type=int, default=5)
    parser.add_argument("--shifted", action="store_true")
    args = parser.parse_args()
    task = load_task("breast-cancer")
    spec = task.record
    config = RunConfig(task="breast-cancer", clients=args.hospitals, val_fraction=0.0)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.hospitals):
        data = load_client_data(config, i, args.hospitals)
        write(args.out / f"hospital-{i}.csv", spec.columns, spec.label, spec.classes, data.train_x, data.train_y)
        print(f"{args.out / f'hospital-{i}.csv'}: {len(data.train_y)} patients, "
              f"{int(data.train_y.sum())} benign")
    test = task.dataset(None)  # the central 20%: rows no hospital trained on, without their labels
    write(args.out / "patients.csv", spec.columns, spec.label, spec.classes, test.test_x, test.test_y)
    if args.shifted:
        sizes = [i for i, c in enumerate(spec.columns) if any(w in c for w in ("radius", "perimeter", "area"))]
        shifted = test.test_x.copy()
        shifted[:, sizes] *= 1.3
        write(args.out / "shifted.csv", spec.columns, spec.label, spec.classes, shifted, test.test_y)


if __name__ == "__main__":
    main()
