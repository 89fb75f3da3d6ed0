"""DP-SGD cost on the client: seconds per local epoch without DP and with each Opacus mode.

fedproof's DP draws its noise and Poisson batches from an AES-CTR CSPRNG (``privacy.secure_random``); the row
"hooks, torch's generator" is Opacus as it ships (predictable ``torch`` generators), to price that choice.

Same model (fedproof's CNN), same 6,000 real Fashion-MNIST training images, batch 64, one torch thread,
through fedproof's own training loop (``fl_client.training.run_epochs`` + ``privacy.dp.make_private``).
Each mode runs in its own process (so peak memory is its own), twice, interleaved; the table takes the
fastest epoch seen, which is the least disturbed by other load on a shared machine.

    python benchmarks/dp_overhead.py [--samples 6000] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys

from measure import measure

MODES = ("none", "hooks", "functorch", "ghost", "torch-rng")

WORKER = """
import json, sys, time, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from fedproof.core.data import load_dataset
from fedproof.core.model import make_model
from fedproof.core.features import to_tensors
from fl_client.training import run_epochs
from privacy.dp import DPSettings, make_private

mode, samples, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
data = load_dataset()
x, y = to_tensors(data.train_x[:samples], data.train_y[:samples])
model = make_model("cnn", seed=0)  # end-to-end: per-sample gradients through every layer
loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
times = []
if mode == "none":
    for _ in range(epochs):
        t = time.perf_counter(); run_epochs(model, optimizer, nn.CrossEntropyLoss(), loader, 1); times.append(time.perf_counter() - t)
elif mode == "torch-rng":  # Opacus as it ships: noise and Poisson sampling from torch's generators
    from opacus import PrivacyEngine
    hooks, opt, dl = PrivacyEngine().make_private(module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True, grad_sample_mode="hooks", wrap_model=False)
    for _ in range(epochs):
        t = time.perf_counter(); run_epochs(model, opt, nn.CrossEntropyLoss(), dl, 1); times.append(time.perf_counter() - t)
else:
    with make_private(model, optimizer, loader, DPSettings(grad_sample_mode=mode), 1.0) as p:
        for _ in range(epochs):
            t = time.perf_counter(); run_epochs(model, p.optimizer, p.criterion, p.loader, 1); times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    best: dict[str, float] = {}
    peak: dict[str, int] = {}
    for _ in range(args.repeats):
        for mode in MODES:
            _, rss, proc = measure([sys.executable, "-c", WORKER, mode, str(args.samples), str(args.epochs)])
            if proc.returncode != 0:
                sys.exit(f"{mode} failed:\n{proc.stderr}")
            times = json.loads(proc.stdout.strip().splitlines()[-1])
            best[mode] = min(best.get(mode, float("inf")), *times)
            peak[mode] = max(peak.get(mode, 0), rss)
    print(f"\nLocal training, {args.samples} Fashion-MNIST images, batch 64, 1 thread, fastest of "
          f"{args.repeats * args.epochs} epochs; baseline = no DP\n")
    print("| mode | s/epoch | x no-DP | peak RSS MB | x no-DP |")
    print("|---|---|---|---|---|")
    names = {"none": "no DP", "torch-rng": "hooks, torch's generator (Opacus as shipped)"}
    for mode in MODES:
        print(f"| {names.get(mode, mode)} | {best[mode]:.2f} | {best[mode] / best['none']:.2f} | "
              f"{peak[mode] / 2**20:.0f} | {peak[mode] / peak['none']:.2f} |")
    print(f"\nThe secure generator costs {100 * (best['hooks'] / best['torch-rng'] - 1):+.1f}% per epoch "
          "(hooks with AES-CTR noise and sampling against hooks with torch's generators).")


if __name__ == "__main__":
    main()
