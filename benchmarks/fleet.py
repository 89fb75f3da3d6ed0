"""A fleet, in one table per question, from one invocation:

1. **Seconds per round and peak memory** of ``fedproof simulate --clients N -c privacy=user`` (threshold HE with a
   drawn key committee, user-level DP, every device asked when due, a hundred expected to take part a round: q =
   0.1 of 1,000, q = 0.01 of 10,000), for N = 1,000 and, with ``--sizes 1000,10000``, N = 10,000 registered (the draw
   and the join over all of them; a round of 1,000 contributors of 10,000 does not fit this machine's memory:
   every decryptor would be sent a thousand updates, 600 MB). The first round pays for the actors' start and
   every device's first check-in; the table gives the median of the later rounds and the set-up (draw, committee
   ceremony, every other device joining the key).
2. **What one committee member downloads per round**: every revealed update it checks before it decrypts (their
   ciphertexts and signed envelopes), the parent model, the other decryptors' partials when it co-signs.
3. **Accuracy against epsilon** on 1,000 Fashion-MNIST devices, Dirichlet(0.5), user-level epsilon 3 at delta
   1e-5 over the run's rounds: ``benchmarks/fleet_replica.py`` (the same mechanism in numpy, hundreds of rounds a
   minute) for no DP, central noise (the baseline: a trusted server adds it), distributed noise with fixed and
   with adaptive clipping; and the real run of (1) when it ran all the rounds (``--rounds 100``).

    python benchmarks/fleet.py [--rounds 5] [--sizes 1000,10000] [--skip-simulation] [--skip-replica]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from measure import measure

FLEET = ["-c", "privacy=user", "-c", "min-contributors=80", "-c", "server-lr=3", "-c", "update-clip=0.3"]
"""The fleet settings README's "Running a fleet" recommends: a floor of 80 contributors (q N = 100 expected), a
server step of 3 (the noise is averaged over a hundred devices), the update clip of the prototype."""


def participation(clients: int) -> float:
    """q: a hundred contributors expected per round (0.1 of 1,000; 0.01 of 10,000)."""
    return min(0.1, 100 / clients)


def simulate(tmp: str, clients: int, rounds: int, name: str) -> dict:
    """``clients`` registered devices, every one asked when due, each taking part with q = :func:`participation`."""
    cmd = [sys.executable, "-m", "fedproof.cli", "simulate", "--clients", str(clients), "--fraction", "1.0",
           "--rounds", str(rounds), "--partition", "dirichlet", "--run-dir", tmp, "--run-id", name, "--no-ledger",
           *FLEET, "-c", f"participation={participation(clients):g}"]
    wall, rss, proc = measure(cmd)
    if proc.returncode != 0:
        return {"failed": (proc.stdout + proc.stderr)[-600:], "wall": wall, "rss": rss}
    run = Path(tmp) / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    per_round = statistics.median(r["seconds"] for r in later)
    steps = {k: statistics.median(r["step_seconds"].get(k, 0.0) for r in later) for k in later[0]["step_seconds"]}
    doc = json.loads((run / "run.json").read_text())
    trained = [r for r in rows if not r["failed"]]
    contributors = statistics.median(r["train_clients"] for r in trained) if trained else 0
    per_param = statistics.median(r["upload_bytes_per_param"] for r in trained if r["upload_bytes_per_param"]) \
        if trained else 0.0
    keys = [json.loads(p.read_text()) for p in (run / "keys").glob("*.json") if len(p.stem) == 64]
    return {"wall": wall, "rss": rss, "threshold": keys[0]["threshold"] if keys else 0, "per_round": per_round, "steps": steps, "setup": wall - sum(r["seconds"] for r in rows),
            "accuracy": rows[-1]["accuracy"], "rounds": len(rows), "void": len(rows) - len(trained),
            "contributors": contributors, "upload_per_param": per_param,
            "epsilon": max(doc["summary"]["epsilon_by_client"].values(), default=None),
            "resolved": doc.get("resolved", {})}


def committee_download(result: dict, num_values: int) -> dict:
    """Bytes one committee member receives in a round: the revealed updates it checks (ciphertexts plus a signed
    envelope of about 300 bytes each), the parent model (float32), and t partials (N residues of 8 bytes per
    ciphertext) when it co-signs."""
    from privacy.threshold import ThresholdParams

    params = ThresholdParams()
    ciphertexts = params.num_ciphertexts(num_values)
    updates = result["contributors"] * (result["upload_per_param"] * num_values + 300)
    parent = 4 * num_values
    threshold = result.get("threshold") or 12
    partials = threshold * ciphertexts * params.n * 8
    return {"updates": updates, "parent": parent, "partials": partials, "total": updates + parent + partials}


def registration_costs(clients: int) -> dict:
    """What 10,000 registered clients cost before any round: the key set, the allow-list, the partition."""
    from fedproof.core.config import RunConfig
    from fedproof.core.keys import init_key_set
    from fedproof.core.partition import PartitionSpec, partition_indices
    from fedproof.core.task import task_dataset
    from ledger.committee import committee_size
    from ledger.verification import AllowList

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        keys = init_key_set(Path(tmp) / "keys", [str(i) for i in range(clients)])
        out["keys"] = time.perf_counter() - started
        started = time.perf_counter()
        allow = AllowList.load(keys.allowlist)
        out["allow"] = time.perf_counter() - started
        out["allow_bytes"] = keys.allowlist.stat().st_size
        assert len(allow.keys) == clients
    dataset = task_dataset(RunConfig().task, None)
    started = time.perf_counter()
    parts = partition_indices(dataset.train_y, PartitionSpec(scheme="dirichlet", num_partitions=clients, seed=42,
                                                             alpha=0.5, classes_per_partition=2))
    out["partition"] = time.perf_counter() - started
    out["min_part"] = min(len(p) for p in parts)
    out["committee"] = committee_size(clients, int(0.1 * clients), 1e-6, 100)
    return out


def replica_table(rounds: int) -> list[tuple[str, float, float]]:
    from fleet_replica import Setting, load_fleet, run

    from privacy.user_dp import calibrate_user_noise

    fleet = load_fleet(1000)
    sigma = calibrate_user_noise(3.0, 1e-5, 0.1, rounds)
    knobs = dict(rounds=rounds, q=0.1, clip=0.3, lr=0.05, epochs=2, batch=16, server_lr=3.0, server_momentum=0.0)
    rows = []
    for setting, extra in [(Setting("no DP", 0.0), {"server_lr": 1.0}),  # unclipped: a step of 3 overshoots
                           (Setting("central noise (trusted server), fixed clip 0.3", sigma, "central"), {}),
                           (Setting("distributed noise, fixed clip 0.3 (tuned)", sigma), {}),
                           (Setting("distributed noise, adaptive clip from 0.3 (quantile 0.5)", sigma, adaptive=True),
                            {}),
                           (Setting("distributed noise, adaptive clip from 0.3 (quantile 0.1)", sigma, adaptive=True),
                            {"target_quantile": 0.1}),
                           (Setting("distributed noise, fixed clip 0.05 (too tight)", sigma), {"clip": 0.05}),
                           (Setting("distributed noise, adaptive clip from 0.05 (quantile 0.1)", sigma,
                                    adaptive=True), {"clip": 0.05, "target_quantile": 0.1}),
                           (Setting("distributed noise, fixed clip 1.0 (too loose)", sigma), {"clip": 1.0}),
                           (Setting("distributed noise, adaptive clip from 1.0 (quantile 0.1)", sigma,
                                    adaptive=True), {"clip": 1.0, "target_quantile": 0.1})]:
        accuracy, clip = run(fleet, setting, **{**knobs, **extra})
        rows.append((setting.name, 0.0 if not setting.sigma else 3.0, accuracy, clip))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="simulated rounds (100: the accuracy row too)")
    parser.add_argument("--sizes", default="1000",
                        help="registered devices to simulate, comma-separated (1000,10000: also 10,000, q = 0.01)")
    parser.add_argument("--ten-thousand-rounds", type=int, default=3)
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--skip-replica", action="store_true")
    parser.add_argument("--replica-rounds", type=int, default=100)
    args = parser.parse_args()

    from fedproof.core.task import load_task
    from fedproof.core.weights import flatten
    from flwr.app import ArrayRecord

    num_values = int(flatten(ArrayRecord(load_task("fashion-mnist").model("", 10, seed=1).state_dict())).size)
    sims: dict[int, dict] = {}
    if not args.skip_simulation:
        with tempfile.TemporaryDirectory() as tmp:
            for n in [int(size) for size in args.sizes.split(",")]:
                rounds = args.rounds if n == 1000 else args.ten_thousand_rounds
                sims[n] = simulate(tmp, n, rounds, f"fleet-{n}")
                print(f"simulated {n} devices: {json.dumps({k: v for k, v in sims[n].items() if k != 'resolved'})}",
                      file=sys.stderr, flush=True)
    registered = registration_costs(10_000)

    print("\n### Seconds per round, 2 cores (user-level DP, threshold HE with a drawn committee, a hundred devices "
          "expected a round)\n")
    print("| registered devices | q | took part (median) | s/round (median, rounds 2+) | check-in | "
          "train | reveal | decrypt | co-sign | set-up s (draw, key, join) | peak memory GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in sims.items():
        if "failed" in r:
            print(f"| {n:,} | {participation(n):g} | - | did not complete: {r['failed'][-120:]!r} | | | | | | | "
                  f"{r['rss'] / 2**30:.1f} |")
            continue
        s = r["steps"]
        print(f"| {n:,} | {participation(n):g} | {r['contributors']:.0f} | {r['per_round']:.1f} | {s.get('check-in', 0):.1f} | "
              f"{s.get('train', 0):.1f} | {s.get('reveal', 0):.1f} | {s.get('sum', 0) + s.get('decrypt', 0):.1f} | "
              f"{s.get('co-sign', 0):.1f} | {r['setup']:.0f} | {r['rss'] / 2**30:.1f} |")
    if 10_000 not in sims:
        print("| 10,000 | - | - | not simulated (--sizes 1000,10000) | | | | | | | |")
    print(f"\n10,000 registered devices before any round: key set {registered['keys']:.1f} s, allow-list "
          f"{registered['allow_bytes'] / 1e6:.1f} MB loaded in {registered['allow']:.2f} s, Dirichlet(0.5) partition "
          f"{registered['partition']:.1f} s (smallest device {registered['min_part']} records), committee of "
          f"{registered['committee']} (10% colluders, risk 1e-6 over 100 draws).")

    if 1000 in sims and "failed" not in sims[1000]:
        d = committee_download(sims[1000], num_values)
        print("\n### What one committee member downloads per round (1,000 devices, "
              f"{sims[1000]['contributors']:.0f} contributors, {num_values:,} parameters)\n")
        print("| revealed updates it checks | parent model | partials (co-signing) | total |")
        print("|---|---|---|---|")
        print(f"| {d['updates'] / 2**20:.1f} MiB | {d['parent'] / 2**10:.0f} KiB | {d['partials'] / 2**20:.1f} MiB | "
              f"{d['total'] / 2**20:.1f} MiB |")

    if not args.skip_replica:
        rows = replica_table(args.replica_rounds)
        base = rows[0][2]
        print(f"\n### Accuracy, 1,000 Fashion-MNIST devices, Dirichlet(0.5), {args.replica_rounds} rounds, q = 0.1, "
              "user-level delta 1e-5\n")
        print("| setting | user-level epsilon | accuracy | vs no DP (pp) | final clip |")
        print("|---|---|---|---|---|")
        for name, eps, acc, clip in rows:
            print(f"| {name} (replica) | {eps:g} | {acc:.4f} | {100 * (acc - base):+.1f} | {clip:.2f} |")
        real = sims.get(1000)
        if real and "failed" not in real and real["rounds"] >= args.replica_rounds:
            print(f"| distributed noise, fixed clip: fedproof simulate, threshold HE | {real['epsilon']:.2f} | "
                  f"{real['accuracy']:.4f} | {100 * (real['accuracy'] - base):+.1f} | 0.30 |")


if __name__ == "__main__":
    main()
