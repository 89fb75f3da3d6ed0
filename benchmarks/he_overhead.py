"""Cost of encrypted aggregation (threshold CKKS), measured in one run against plaintext FedAvg and, as a baseline,
an NVIDIA FLARE-style shared-key CKKS built here with TenSEAL (FLARE's HE filter defaults: every client holds
the one secret key; fedproof has no such scheme).

1. Bytes per parameter on the wire: a client's upload; what a decryptor downloads (every admitted update, to
   recompute the sum itself; the baseline: the sum) and uploads (its partial decryption).
2. Seconds: one client encrypting its update, the server summing K updates, one decryptor's work (parse and
   re-add the K signed updates, then its flooded partial decryption), the server fusing t partials; for 100k
   and 1M parameters and 10 / 100 clients. Baselines: the plaintext weighted sum over float32 arrays, and (10
   clients) the shared-key baseline's encrypt, sum and decrypt.
3. The key ceremony's computation per party, for 10 and 50 parties.
4. Whole rounds: `fedproof simulate` on the demo setting (real Fashion-MNIST, 10 clients, Dirichlet 0.5,
   DP on, same seeds) with threshold CKKS against plaintext aggregation.

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

from privacy.keygen import deal, finish, hello
from privacy.threshold import (
    ThresholdParams,
    fuse,
    majority,
    partial_decryption,
    rerandomize,
    sum_ciphertexts,
)

THRESHOLD = ThresholdParams()


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def updates(size: int, clients: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(500, 10_000, clients)
    return counts, [n * rng.uniform(-0.5, 0.5, size) for n in counts]


def threshold_key(parties: int):
    """Every party's steps of the key ceremony, in one process; returns (holdings, seconds per party's compute)."""
    ids = [f"p{i:03d}" for i in range(parties)]
    t = majority(parties)
    started = time.perf_counter()
    said = {p: hello(THRESHOLD, p) for p in ids}
    hellos = {p: h for p, (h, _) in said.items()}
    deals = {p: deal(THRESHOLD, p, said[p][1], hellos, t) for p in ids}
    holdings = {k: finish(THRESHOLD, k, said[k][1], hellos, {p: (deals[p].public_share, deals[p].sealed[k])
                                                               for p in ids}, t) for k in ids}
    return holdings, (time.perf_counter() - started) / parties


def threshold_costs(size: int, clients: int, holdings) -> dict:
    counts, values = updates(size, clients)
    scale = int(counts.sum())
    distinct = min(clients, 3)  # encrypting is per client and parallel: a few distinct ciphertexts, cycled
    key = next(iter(holdings.values())).public_key
    first, encrypt_s = timed(lambda: key.encrypt(values[0] / scale))
    encrypted = [first] + [key.encrypt(values[i] / scale) for i in range(1, distinct)]
    payloads = [encrypted[i % distinct] for i in range(clients)]
    exact = sum(values[i % distinct] for i in range(clients)) / scale
    total, sum_s = timed(lambda: sum_ciphertexts(THRESHOLD, payloads))
    ordered = sorted(holdings)
    t = holdings[ordered[0]].threshold
    chosen = ordered[:t]
    points = [holdings[c].x for c in chosen]
    std = THRESHOLD.flooding_std(len(holdings), clients + 1)  # + the re-randomizer's encryption of zero
    rerandomized, rerandomize_s = timed(lambda: rerandomize(key, total, bytes(32)))  # each decryptor, and the fuser
    partials = []
    for c in chosen:
        partial, partial_s = timed(lambda: partial_decryption(THRESHOLD, holdings[c].share, holdings[c].x, points,
                                                              rerandomized, std))
        partials.append(partial)
    decrypted, fuse_s = timed(lambda: fuse(THRESHOLD, rerandomized[:, 0], partials, size))
    return {
        "up": sum(map(len, first)) / size,
        "down": clients * sum(map(len, first)) / size,
        "partial_up": partials[0].nbytes / size,
        "encrypt_s": encrypt_s,
        "sum_s": sum_s,
        "decrypt_s": sum_s + rerandomize_s + partial_s,  # re-add the signed updates, re-randomize, decrypt its part
        "rerandomize_s": rerandomize_s,
        "fuse_s": rerandomize_s + fuse_s,
        "error": float(np.abs(decrypted - exact).max() * scale / counts.sum()),
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
    """The shared-key baseline, built here: NVIDIA FLARE's HE filter settings (TenSEAL CKKSVector, N=8192,
    [60, 40, 40], scale 2^40, weights multiplied in), one secret key that every client holds, and a server
    context without it."""
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


def round_time(tmp: str, scheme: str, rounds: int, dp: bool = True) -> dict:
    name = scheme + ("" if dp else "-nodp")
    he = ["--no-he"] if scheme == "plain" else ["--he"]
    wall, rss, proc = measure(
        [sys.executable, "-m", "fedproof.cli", "simulate", "--rounds", str(rounds), "--run-dir", f"{tmp}/{name}",
         "--run-id", name, *he, "--no-ledger", "--dp" if dp else "--no-dp"]  # own run dirs: fresh budgets
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
    holdings, _ = threshold_key(10)
    threshold, flare = threshold_costs(big, 10, holdings), nvflare_costs(big, 2)
    print(f"\nBytes per parameter ({big:,} parameters, 10 clients; baseline float32 = 4)\n")
    print("| scheme | client up | x float32 | decryptor down | decryptor up |")
    print("|---|---|---|---|---|")
    print("| plaintext float32 | 4.00 | 1.00 | - | - |")
    print(f"| **threshold**: joint key, N=4096, one 60-bit prime, coefficient-packed, bit-packed | "
          f"{threshold['up']:.2f} | {threshold['up'] / 4:.2f} | {threshold['down']:.1f} (10 signed updates) | "
          f"{threshold['partial_up']:.2f} (its partial) |")
    print(f"| baseline: NVIDIA FLARE-style shared key, built in the benchmark (TenSEAL N=8192 [60,40,40] 2^40) | "
          f"{flare['up']:.2f} | {flare['up'] / 4:.2f} | {flare['down']:.2f} (the sum) | - |")

    print("\nKey ceremony: computation per party (hello, deal and its commitment, finish)\n")
    print("| parties | threshold | s per party |")
    print("|---|---|---|")
    for parties in (10, 50):
        _, per_party = threshold_key(parties) if parties != 10 else (None, threshold_key(10)[1])
        print(f"| {parties} | {majority(parties)} | {per_party:.2f} |", flush=True)

    print("\nSeconds per step (server sum = parse and add all updates; baseline = plaintext weighted sum of float32 "
          "updates; threshold decryptor = re-add the signed updates + re-randomize + flooded partial; server fuse = "
          "re-randomize c0 + add the partials; error = max |decrypted average - exact|)\n")
    print("| parameters | clients | scheme | client encrypt s | server sum s | plaintext sum s | x plaintext | "
          "decryptor s | of which re-randomizing s | server fuse s | max error of the average |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for clients in args.clients:
            base = plaintext_sum_seconds(size, clients)
            r = threshold_costs(size, clients, holdings)
            print(f"| {size:,} | {clients} | threshold | {r['encrypt_s']:.3f} | {r['sum_s']:.3f} | {base:.3f} | "
                  f"{r['sum_s'] / base:.1f} | {r['decrypt_s']:.3f} | {r['rerandomize_s']:.3f} | {r['fuse_s']:.3f} | "
                  f"{r['error']:.1e} |",
                  flush=True)
    for size in args.sizes:
        r = nvflare_costs(size, 10)
        print(f"| {size:,} | 10 | baseline: NVIDIA FLARE-style shared key, built in the benchmark | "
              f"{r['encrypt_s']:.3f} | {r['sum_s']:.3f} | | | {r['decrypt_s']:.3f} | | | |", flush=True)


def rounds(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {scheme: round_time(tmp, scheme, args.rounds) for scheme in ("plain", "threshold")}
    plain = results["plain"]
    print(f"\nWhole rounds: demo setting (10 clients, Dirichlet 0.5, DP epsilon 3, signed updates, same seeds, no "
          f"ledger), {args.rounds} rounds; baseline = plaintext aggregation\n")
    print("| aggregation | s/round (rounds 2+) | x plaintext | upload B/param | final accuracy | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in [("plaintext FedAvg", plain), ("threshold CKKS (key ceremony before round 1)",
                                                  results["threshold"])]:
        print(f"| {name} | {r['round_s']:.1f} | {r['round_s'] / plain['round_s']:.2f} | {r['upload'] or 0:.2f} | "
              f"{r['accuracy']:.4f} | {r['rss'] / 2**20:.0f} |")
    # DP noise comes from a CSPRNG no seed reaches, so DP runs differ run to run whatever the aggregation; without
    # DP the same seeds give the same training, and the accuracies show what the aggregation itself changes
    with tempfile.TemporaryDirectory() as tmp:
        clear = {scheme: round_time(tmp, scheme, args.rounds, dp=False) for scheme in ("plain", "threshold")}
    print(f"\nThe same without DP (deterministic for the same seeds), {args.rounds} rounds: final accuracy, plaintext "
          f"{clear['plain']['accuracy']:.4f}, threshold CKKS {clear['threshold']['accuracy']:.4f} (difference "
          f"{100 * (clear['threshold']['accuracy'] - clear['plain']['accuracy']):+.2f} pp)")


if __name__ == "__main__":
    main()
