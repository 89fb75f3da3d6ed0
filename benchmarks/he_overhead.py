"""Cost of encrypted aggregation, measured in one run against plaintext FedAvg (and NVIDIA FLARE's CKKS defaults).

1. Bytes per parameter on the wire, up (client -> server) and down (the sum the committee decrypts).
2. Seconds: one client encrypting its update, the server summing K updates (deserialize + add + serialize),
   one committee member decrypting the sum; for 100k and 1M parameters and 10 / 100 clients. Baseline: the
   plaintext server doing the same weighted sum over float32 arrays.
3. Whole rounds: `fedproof simulate` on the demo setting (real Fashion-MNIST, 10 clients, Dirichlet 0.5,
   DP on) with HE against the same run with plaintext aggregation.

    python benchmarks/he_overhead.py [--sizes 100000 1000000] [--clients 10 100] [--rounds 3] [--skip-rounds]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal as ts
from measure import measure

from privacy.he import PublicContext, SecretContext


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def updates(size: int, clients: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(500, 10_000, clients)
    return counts, [n * rng.uniform(-0.5, 0.5, size) for n in counts]


def fedproof_costs(size: int, clients: int) -> dict:
    secret = SecretContext.generate()
    public = PublicContext.from_bytes(secret.public().to_bytes())
    counts, values = updates(size, clients)
    first, encrypt_s = timed(lambda: secret.encrypt(values[0]))
    # every client encrypts its own update in parallel in a real round: time one, reuse it for the others
    payloads = [first] + [secret.encrypt(v) for v in values[1:]]

    def server_sum():
        total = public.new_sum(size)
        for p in payloads:
            total.add(p)
        return total.serialize()

    summed, sum_s = timed(server_sum)
    decrypted, decrypt_s = timed(lambda: secret.decrypt(summed, size))
    error = float(np.abs(decrypted - np.sum(values, axis=0)).max() / counts.sum())
    return {
        "up": sum(map(len, first)) / size,
        "down": sum(map(len, summed)) / size,
        "encrypt_s": encrypt_s,
        "sum_s": sum_s,
        "decrypt_s": decrypt_s,
        "error": error,
    }


def plaintext_sum_seconds(size: int, clients: int) -> float:
    counts, values = updates(size, clients)
    blobs = [v.astype(np.float32).tobytes() for v in values]

    def server_sum():
        acc = np.zeros(size)
        for n, blob in zip(counts, blobs):
            acc += n * np.frombuffer(blob, dtype=np.float32)
        return (acc / counts.sum()).astype(np.float32).tobytes()

    return timed(server_sum)[1]


def nvflare_costs(size: int, clients: int) -> dict:
    """NVIDIA FLARE's HE filter: TenSEAL CKKSVector, N=8192, [60, 40, 40], scale 2^40, weights multiplied in."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2**40
    server = ts.context_from(ctx.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False,
                                          save_relin_keys=False))
    counts, values = updates(size, clients)
    first, encrypt_s = timed(lambda: ts.ckks_vector(ctx, values[0]).serialize())
    blobs = [first] + [ts.ckks_vector(ctx, v).serialize() for v in values[1:]]

    def server_sum():
        acc = ts.ckks_vector_from(server, blobs[0])
        for blob in blobs[1:]:
            acc += ts.ckks_vector_from(server, blob)
        return acc.serialize()

    summed, sum_s = timed(server_sum)
    _, decrypt_s = timed(lambda: ts.ckks_vector_from(ctx, summed).decrypt())
    return {"up": len(first) / size, "down": len(summed) / size, "encrypt_s": encrypt_s, "sum_s": sum_s,
            "decrypt_s": decrypt_s}


def round_time(tmp: str, he: bool, rounds: int) -> dict:
    name = "he" if he else "plain"
    wall, rss, proc = measure(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--rounds", str(rounds), "--run-dir", f"{tmp}/{name}",
         "--run-id", name, "--he" if he else "--no-he", "--no-ledger"]  # own run dirs: fresh privacy budgets
    )
    if proc.returncode != 0:
        sys.exit(f"{name} run failed:\n{proc.stdout}\n{proc.stderr}")
    rows = [json.loads(line) for line in (Path(tmp) / name / name / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows  # round 1 pays Ray start-up, DP calibration and key generation
    return {"round_s": sum(r["seconds"] for r in later) / len(later), "accuracy": rows[-1]["accuracy"],
            "upload": rows[-1]["upload_bytes_per_param"], "wall": wall, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-rounds", action="store_true", help="only the micro-benchmarks")
    parser.add_argument("--only-rounds", action="store_true", help="only the whole-round comparison")
    args = parser.parse_args()

    if not args.only_rounds:
        micro(args)
    if not args.skip_rounds:
        rounds(args)


def micro(args: argparse.Namespace) -> None:
    big = max(args.sizes)
    ours, flare = fedproof_costs(big, 2), nvflare_costs(big, 2)
    print(f"\nBytes per parameter ({big:,} parameters; baseline float32 = 4)\n")
    print("| scheme | up B/param | x float32 | down B/param | x float32 |")
    print("|---|---|---|---|---|")
    for name, r in [("plaintext float32", {"up": 4.0, "down": 4.0}),
                    ("fedproof CKKS: seeded symmetric, 2 reals/slot, N=4096, one 50-bit prime", ours),
                    ("NVIDIA FLARE defaults: TenSEAL N=8192 [60,40,40] 2^40", flare)]:
        print(f"| {name} | {r['up']:.2f} | {r['up'] / 4:.2f} | {r['down']:.2f} | {r['down'] / 4:.2f} |")

    print("\nSeconds per step (server sum = deserialize, add and serialize all updates; baseline = plaintext "
          "weighted sum of float32 updates)\n")
    print("| parameters | clients | client encrypt s | server sum s | plaintext sum s | x plaintext | "
          "committee decrypt s | max error of the average |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for clients in args.clients:
            r, base = fedproof_costs(size, clients), plaintext_sum_seconds(size, clients)
            print(f"| {size:,} | {clients} | {r['encrypt_s']:.3f} | {r['sum_s']:.3f} | {base:.3f} | "
                  f"{r['sum_s'] / base:.1f} | {r['decrypt_s']:.3f} | {r['error']:.1e} |", flush=True)
    for size in args.sizes:
        r = nvflare_costs(size, 10)
        print(f"| {size:,} | 10 | {r['encrypt_s']:.3f} | {r['sum_s']:.3f} | (NVIDIA FLARE parameters) | | "
              f"{r['decrypt_s']:.3f} | |", flush=True)



def rounds(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain, he = round_time(tmp, False, args.rounds), round_time(tmp, True, args.rounds)
    print(f"\nWhole rounds: demo setting (10 clients, Dirichlet 0.5, DP epsilon 3, "
          f"signed updates, no ledger), {args.rounds} rounds; baseline = plaintext aggregation\n")
    print("| aggregation | s/round (rounds 2+) | x plaintext | upload B/param | final accuracy | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in [("plaintext FedAvg", plain), ("CKKS + committee of 2", he)]:
        print(f"| {name} | {r['round_s']:.1f} | {r['round_s'] / plain['round_s']:.2f} | {r['upload']:.2f} | "
              f"{r['accuracy']:.4f} | {r['rss'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
