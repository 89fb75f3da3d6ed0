"""Simulation cost: `fedproof simulate` (Flower simulation engine on Ray) against an in-process FedAvg loop.

For each client count, both run the same rounds of FedAvg on the same partitions of the real Fashion-MNIST,
with the same local training code; the baseline is a plain Python loop in one process (no Flower, no Ray,
clients one after another, torch using all cores). The ratio column says what the framework costs on top.
Peak RSS is the sum over the whole process tree (driver, Ray's raylet/GCS, client actors), sampled.

    python benchmarks/simulation.py [--clients 10 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from measure import measure

NO_DP = {"batch-size": 64, "lr": 0.05, "local-epochs": 3}  # the model's settings without DP (unclipped gradients)

BASELINE = """
import json, sys, time, torch
from fedproof.core.config import RunConfig
from fedproof.core.client_data import load_client_data
from fedproof.core.data import load_dataset
from fedproof.core.model import make_model
from fedproof.core.features import evaluate
from fl_client.state import ClientState
from fl_client.training import train_round

config = RunConfig.from_mapping(json.loads(sys.argv[1]))
data = load_dataset(config.data_dir or None)
clients = [load_client_data(config, i, config.clients) for i in range(config.clients)]
global_model = make_model(config.model, data.num_classes, seed=config.seed)
rounds = []
for rnd in range(1, config.rounds + 1):
    t = time.monotonic()
    states, weights = [], []
    for pid, c in enumerate(clients):
        model = make_model(config.model, data.num_classes)
        model.load_state_dict(global_model.state_dict())
        outcome = train_round(model, c.train_x, c.train_y, config, ClientState(), rnd, rnd * 1009 + pid)
        weights.append(outcome.num_examples)
        states.append(model.state_dict())
    total = sum(weights)
    global_model.load_state_dict({k: sum(sd[k] * w for sd, w in zip(states, weights)) / total for k in states[0]})
    for c in clients:  # the same local evaluation the federated run does
        evaluate(global_model, c.val_x, c.val_y)
    loss, acc = evaluate(global_model, data.test_x, data.test_y)
    rounds.append({"seconds": time.monotonic() - t, "accuracy": acc})
print(json.dumps(rounds))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clients in args.clients:
            settings = {"clients": clients, "rounds": args.rounds, "run-dir": tmp, "run-id": f"bench-{clients}",
                        "dp": False, "he": False, "ledger": False, **NO_DP}
            wall, rss, proc = measure(
                [sys.executable, "-m", "fedproof.cli", "simulate", "--clients", str(clients), "--rounds",
                 str(args.rounds), "--run-dir", tmp, "--run-id", f"bench-{clients}", "--no-dp", "--no-he", "--no-ledger",
                 *[arg for k, v in NO_DP.items() for arg in ("-c", f"{k}={v}")]]
            )
            if proc.returncode != 0:
                sys.exit(f"fedproof simulate failed:\n{proc.stdout}\n{proc.stderr}")
            metrics = [json.loads(line) for line in (Path(tmp) / f"bench-{clients}" / "metrics.jsonl").read_text().splitlines()]
            b_wall, b_rss, b_proc = measure([sys.executable, "-c", BASELINE, json.dumps(settings)])
            if b_proc.returncode != 0:
                sys.exit(f"baseline failed:\n{b_proc.stderr}")
            baseline = json.loads(b_proc.stdout.strip().splitlines()[-1])
            sim_round = sum(m["seconds"] for m in metrics[1:]) / max(len(metrics) - 1, 1)  # round 1 pays start-up
            base_round = sum(m["seconds"] for m in baseline[1:]) / max(len(baseline) - 1, 1)
            rows.append(
                (clients, args.rounds, wall, b_wall, sim_round, base_round, rss, b_rss,
                 metrics[-1]["accuracy"], baseline[-1]["accuracy"])
            )
            print(f"done: {clients} clients", file=sys.stderr, flush=True)

    print(f"\nFedAvg on Fashion-MNIST, Dirichlet(0.5), {args.rounds} rounds, {os.cpu_count()} cores; "
          "baseline = in-process FedAvg loop (no Flower, no Ray)\n")
    header = ("clients", "rounds", "wall s", "s/round (rounds 2+)", "x baseline", "peak RSS MB", "x baseline",
              "final acc", "baseline acc")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for c, r, wall, b_wall, sr, br, rss, b_rss, acc, b_acc in rows:
        print(f"| {c} | {r} | {wall:.0f} | {sr:.1f} | {sr / br:.2f} | {rss / 2**20:.0f} | {rss / b_rss:.2f} | "
              f"{acc:.4f} | {b_acc:.4f} |")


if __name__ == "__main__":
    main()
