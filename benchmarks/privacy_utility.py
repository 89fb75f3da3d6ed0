"""Privacy against utility on the demo's setting: final test accuracy for epsilon in {1, 3, 8} and no DP.

Each row is one `fedproof simulate` run on the real Fashion-MNIST (10 clients, Dirichlet 0.5, 5 rounds by
default), all in this one invocation; the baseline is the run without DP. HE is off in every run: it does
not change accuracy (benchmarks/he_overhead.py) and this table is about DP alone.

    python benchmarks/privacy_utility.py [--epsilons 1 3 8] [--rounds 5] [--clients 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from measure import measure

from fedproof.rundir import RunDirectory


def run(tmp: str, name: str, rounds: int, clients: int, dp_args: list[str]) -> dict:
    wall, rss, proc = measure(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--clients", str(clients), "--rounds", str(rounds),
         "--run-dir", f"{tmp}/{name}", "--run-id", name, "--no-he", "--no-ledger", *dp_args]  # fresh budgets each
    )
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    run_dir = Path(tmp) / name / name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = RunDirectory(run_dir).read()["summary"]
    later = rows[1:] or rows  # round 1 pays Ray start-up and noise calibration
    return {
        "accuracy": rows[-1]["accuracy"],
        "epsilon": max(summary["epsilon_by_client"].values(), default=None),
        "round_s": sum(r["seconds"] for r in later) / len(later),
        "wall": wall,
        "rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["no DP"] = run(tmp, "nodp", args.rounds, args.clients, ["--no-dp"])
        for eps in args.epsilons:
            results[f"epsilon {eps:g}"] = run(tmp, f"eps{eps:g}", args.rounds, args.clients,
                                              ["--dp", "--target-epsilon", str(eps)])
            print(f"done: epsilon {eps:g}", file=sys.stderr, flush=True)
    base = results["no DP"]
    print(f"\nFashion-MNIST, {args.clients} clients, Dirichlet(0.5), {args.rounds} rounds, delta 1e-5; "
          "baseline = the same run without DP\n")
    print("| setting | max client epsilon | test accuracy | accuracy - no DP (pp) | s/round (rounds 2+) | x no-DP | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        print(f"| {name} | {eps} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.1f} | "
              f"{r['round_s']:.1f} | {r['round_s'] / base['round_s']:.2f} | {r['wall']:.0f} |")


if __name__ == "__main__":
    main()
