"""Privacy against utility on the demo's setting, in one table from one invocation.

Rows, all on the real Fashion-MNIST, 10 clients, Dirichlet(0.5) partitions, delta 1e-5, each client's lifetime
epsilon as the budget (every federated row is one `fedproof simulate` run with fresh budgets):
- no DP: the same model and partitions, with the settings that suit unclipped SGD (batch 64, lr 0.05, 3 local
  epochs; the DP defaults' lr 4 is for clipped gradients);
- epsilon 1, 3 and 8 with the defaults (ScatterNet + linear head, batch 512, clip 0.1, lr 4, 30 rounds x 1 epoch);
- the old defaults at epsilon 3 (end-to-end tanh CNN, batch 64, clip 1, lr 0.03, 5 rounds x 2 epochs);
- central DP-SGD: the same model trained by the same code (fl_client.training.train_round: Opacus, secure noise)
  on the union of the clients' training splits, at epsilon 3, with Tramer & Boneh's central settings scaled to
  what fits in memory (batch 2048, lr 4, 40 epochs);
- the published central results (Tramer & Boneh, ICLR 2021) as reference rows.

HE and the ledger are off in these runs: they do not change accuracy (benchmarks/he_overhead.py: +0.04 pp) and
this table is about DP; `make demo` prints the demo's own accuracy and wall time with both on.

    python benchmarks/privacy_utility.py [--epsilons 1 3 8] [--skip-old]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from measure import measure

from fedproof.core.rundir import RunDirectory

NO_DP = ["--no-dp", "--batch-size", "64", "--lr", "0.05", "--local-epochs", "3"]
OLD_DEFAULTS = ["-c", "model=\"cnn\"", "--rounds", "5", "--local-epochs", "2", "--batch-size", "64", "--lr", "0.03",
                "--max-grad-norm", "1.0"]
CENTRAL = {"batch_size": 2048, "lr": 4.0, "local_epochs": 40}
PUBLISHED = [("published central: end-to-end tanh CNN", 0.860), ("published central: ScatterNet + linear", 0.897)]


def federated(tmp: str, name: str, clients: int, args: list[str]) -> dict:
    wall, rss, proc = measure(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--clients", str(clients), "--run-dir", f"{tmp}/{name}",
         "--run-id", name, "--no-he", "--no-ledger", *args]
    )
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    run_dir = Path(tmp) / name / name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = RunDirectory(run_dir).read()["summary"]
    later = rows[1:] or rows  # round 1 pays Ray start-up, feature extraction and noise calibration
    return {
        "accuracy": rows[-1]["accuracy"],
        "epsilon": max(summary["epsilon_by_client"].values(), default=None),
        "rounds": len(rows),
        "round_s": sum(r["seconds"] for r in later) / len(later),
        "wall": wall,
    }


def central(clients: int, epsilon: float) -> dict:
    """DP-SGD on the union of the clients' training splits: one data holder with everyone's data."""
    import numpy as np

    from fedproof.core.client_data import load_client_data
    from fedproof.core.config import RunConfig
    from fedproof.core.data import load_dataset
    from fedproof.core.model import make_model
    from fedproof.core.features import evaluate
    from fl_client.state import ClientState
    from fl_client.training import train_round

    started = time.perf_counter()
    config = RunConfig(clients=clients, rounds=1, target_epsilon=epsilon, **CENTRAL)
    parts = [load_client_data(config, i, clients) for i in range(clients)]
    images = np.concatenate([p.train_x for p in parts])
    labels = np.concatenate([p.train_y for p in parts])
    model = make_model(config.model, parts[0].num_classes, seed=config.seed)
    outcome = train_round(model, images, labels, config, ClientState(), 1, seed=0)
    test = load_dataset()
    _, accuracy = evaluate(model, test.test_x, test.test_y)
    return {"accuracy": accuracy, "epsilon": outcome.epsilon, "rounds": None, "round_s": None,
            "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--skip-old", action="store_true", help="leave out the old defaults' row (~5 minutes)")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["no DP"] = federated(tmp, "nodp", args.clients, NO_DP)
        for eps in args.epsilons:
            results[f"epsilon {eps:g}"] = federated(tmp, f"eps{eps:g}", args.clients,
                                                    ["--dp", "--target-epsilon", str(eps)])
            print(f"done: epsilon {eps:g}", file=sys.stderr, flush=True)
        if not args.skip_old:
            results["old defaults (CNN), epsilon 3"] = federated(tmp, "old", args.clients,
                                                                 ["--dp", "--target-epsilon", "3", *OLD_DEFAULTS])
    results["central DP-SGD on the union, epsilon 3"] = central(args.clients, 3.0)
    base, anchor = results["no DP"]["accuracy"], results["central DP-SGD on the union, epsilon 3"]["accuracy"]
    print(f"\nFashion-MNIST, {args.clients} clients, Dirichlet(0.5), delta 1e-5, lifetime epsilon per client; "
          "HE and ledger off (they do not change accuracy)\n")
    print("| setting | rounds | max client epsilon | test accuracy | vs no DP (pp) | vs central DP (pp) | "
          "s/round (rounds 2+) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        rounds = "-" if r["rounds"] is None else str(r["rounds"])
        round_s = "-" if r["round_s"] is None else f"{r['round_s']:.1f}"
        print(f"| {name} | {rounds} | {eps} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base):+.1f} | "
              f"{100 * (r['accuracy'] - anchor):+.1f} | {round_s} | {r['wall']:.0f} |")
    for name, accuracy in PUBLISHED:
        print(f"| {name} (epsilon 3) | - | 3 | {accuracy:.4f} | {100 * (accuracy - base):+.1f} | "
              f"{100 * (accuracy - anchor):+.1f} | - | - |")


if __name__ == "__main__":
    main()
