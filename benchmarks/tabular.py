"""The tabular task (Wisconsin breast-cancer records, scikit-learn's copy) in one table from one invocation.

Rows, all on the same 80/20 split of the 569 patients (``fedproof.core.tasks.breast_cancer``), the test set the
server's central 20%:
- central logistic regression without DP (scikit-learn, on the task's standardised features): the baseline;
- central DP-SGD: a logistic regression (the task's `logistic` model) trained by fedproof's own client code (``fl_client.training.train_round``:
  Opacus, secure noise) on the union of the hospitals' rows, at the federated rows' epsilon and delta;
- federated without DP, and federated with DP, threshold HE and the ledger on: ``fedproof simulate --task
  breast-cancer`` over 5 hospitals with Dirichlet(0.5) label skew, each hospital's epsilon its own budget;
- the same records as a fleet of 50 devices under user-level DP (README, "Running a fleet"): each device's
  whole record set protected, a key committee drawn by sortition.

AUC is computed from the final model's class probabilities on the test set.

    python benchmarks/tabular.py [--epsilon 3] [--clients 5] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from measure import measure

from fedproof.core.client_data import load_client_data
from fedproof.core.config import RunConfig
from fedproof.core.rundir import RunDirectory
from fedproof.core.task import load_task
from fl_client.state import ClientState
from fl_client.training import train_round

TASK = load_task("breast-cancer")
DELTA = 1e-3
"""Below 1/n for the smallest hospital (~50 rows under label skew)."""
TRAINING = ["--batch-size", "32", "--local-epochs", "1", "--max-grad-norm", "1.0", "--lr", "0.5"]


def scores(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        probs = torch.softmax(model.predict_raw(torch.from_numpy(x)), 1)[:, 1].numpy()
    return float(((probs > 0.5) == y).mean()), float(roc_auc_score(y, probs))


def federated(tmp: str, name: str, args: argparse.Namespace, extra: list[str], clients: int = 0,
              training: list[str] = TRAINING) -> dict:
    wall, rss, proc = measure([sys.executable, "-m", "fedproof.cli", "simulate", "--task", "breast-cancer",
                               "--clients", str(clients or args.clients), "--rounds", str(args.rounds), "--run-dir",
                               tmp, "--run-id", name, *training, *extra])
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    run = Path(tmp) / name
    summary = RunDirectory(run).read()["summary"]
    model = TASK.model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(run / "model.safetensors")).items()})
    data = TASK.dataset(None)
    accuracy, auc = scores(model.eval(), data.test_x, data.test_y)
    return {"accuracy": accuracy, "auc": auc, "epsilon": max(summary["epsilon_by_client"].values(), default=None),
            "wall": wall}


def central_logistic() -> dict:
    started = time.perf_counter()
    data, prepare = TASK.dataset(None), TASK.model().prepare
    standardise = lambda x: prepare(torch.from_numpy(x)).numpy()  # noqa: E731 - the task's own features
    fit = LogisticRegression(max_iter=1000).fit(standardise(data.train_x), data.train_y)
    probs = fit.predict_proba(standardise(data.test_x))[:, 1]
    return {"accuracy": float(((probs > 0.5) == data.test_y).mean()), "auc": float(roc_auc_score(data.test_y, probs)),
            "epsilon": None, "wall": time.perf_counter() - started}


def central_dp(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    config = RunConfig(task="breast-cancer", model="logistic", clients=args.clients, rounds=1,
                       target_epsilon=args.epsilon, delta=DELTA, batch_size=64, local_epochs=args.rounds, max_grad_norm=1.0, lr=0.5)
    parts = [load_client_data(config, i, args.clients) for i in range(args.clients)]
    x, y = np.concatenate([p.train_x for p in parts]), np.concatenate([p.train_y for p in parts])
    model = TASK.model(config.model, seed=config.seed)
    outcome = train_round(model, x, y, config, ClientState(), 1, seed=0)
    data = TASK.dataset(None)
    accuracy, auc = scores(model.eval(), data.test_x, data.test_y)
    return {"accuracy": accuracy, "auc": auc, "epsilon": outcome.epsilon, "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--devices", type=int, default=50, help="the fleet row's device count")
    args = parser.parse_args()
    results = {"central logistic regression, no DP (baseline)": central_logistic(),
               f"central logistic regression, DP-SGD, epsilon {args.epsilon:g}": central_dp(args)}
    with tempfile.TemporaryDirectory() as tmp:
        results["federated, no DP"] = federated(tmp, "nodp", args, ["--no-dp", "--no-he", "--no-ledger"])
        # the same records spread over a fleet of 50 devices (about 9 patients each): user-level DP, each device
        # taking part with q = 0.3, noise shares sized for a floor of 8 contributors, a drawn key committee
        results[f"fleet of {args.devices} devices, user-level DP epsilon {args.epsilon:g} + threshold HE"] = federated(
            tmp, "user", args, ["--dp", "--target-epsilon", str(args.epsilon), "--delta", str(DELTA), "--no-ledger",
                                "--fraction", "1.0", "-c", "privacy=user", "-c", "participation=0.3",
                                "-c", "min-contributors=8", "-c", "update-clip=0.5", "-c", "server-lr=2"],
            clients=args.devices, training=["--batch-size", "16", "--local-epochs", "2", "--lr", "0.1"])
        devnet = ["--devnet-dir", f"{tmp}/devnet"]  # a fresh chain of its own, stopped at the end
        try:
            results[f"federated, DP epsilon {args.epsilon:g} + threshold HE + ledger"] = federated(
                tmp, "dp", args, ["--dp", "--target-epsilon", str(args.epsilon), "--delta", str(DELTA), *devnet])
        finally:
            subprocess.run([sys.executable, "-m", "fedproof.cli", "devnet", "stop", "--data-dir", f"{tmp}/devnet"],
                           capture_output=True)
    base = results["central logistic regression, no DP (baseline)"]
    print(f"\nbreast-cancer (569 patients, 30 features), {args.clients} hospitals, Dirichlet(0.5), {args.rounds} "
          f"rounds, delta {DELTA:g}; test set: the central 20% (114 patients)\n")
    print("| setting | max epsilon | accuracy | AUC | accuracy vs baseline (pp) | AUC / baseline | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(f"| {name} | {eps} | {r['accuracy']:.4f} | {r['auc']:.4f} | "
              f"{100 * (r['accuracy'] - base['accuracy']):+.1f} | {r['auc'] / base['auc']:.3f} | {r['wall']:.0f} |")
    print(json.dumps({k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
