"""Deployment engine against simulation, on loopback, in one run: seconds per round and where they go.

Both runs: the demo model on the real Fashion-MNIST, 3 clients, DP, HE and the ledger on, the same seeds.
Deployment: a SuperLink with TLS and node authentication and 3 SuperNodes, from provisioned kits, as
`fedproof server` / `fedproof client` start them. Simulation: `fedproof simulate` (Ray). The breakdown
uses what clients report (local training; encrypting and signing) and a direct measurement of what a
ClientApp process pays to start (Flower starts one per message in deployment: train, evaluate, decrypt).

    python benchmarks/deployment.py [--rounds 3] [--local-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedproof.processes import free_port, stop_pid
from measure import tree_rss

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200"}


def cli(*args: str) -> None:
    done = subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        sys.exit(f"fedproof {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def rows_of(runs: Path) -> list[dict]:
    (run,) = [p for p in runs.iterdir() if (p / "metrics.jsonl").is_file()]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class PeakRss:
    """Peak resident memory of each SuperNode's process tree (the SuperNode and the ClientApps it starts)."""

    def __init__(self, pids: list[int]) -> None:
        import threading

        self.pids, self.peak, self._stop = pids, {pid: 0 for pid in pids}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], tree_rss(pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak.values())


def deployment(tmp: Path, rounds: int, settings: list[str]) -> tuple[list[dict], int]:
    port, devnet = free_port(), free_port()
    kits = tmp / "kits"
    password = tmp / "operator-password"
    password.write_text("benchmark operator\n")
    cli("provision", "--clients", "3", "--server-host", "127.0.0.1", "--port", str(port), "--out", str(kits),
        "--password-file", str(password))
    cli("server", "start", "--kit", str(kits / "server"), "--bind", "127.0.0.1", "--devnet-port", str(devnet),
        "--password-file", str(password))
    threads = str(max(1, (os.cpu_count() or 1) // 3))  # 3 SuperNodes share this host: do not oversubscribe it
    nodes = [subprocess.Popen([*FEDPROOF, "client", "--kit", str(kits / f"client-{i}"), "--port", str(free_port()),
                               "--threads", threads],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for i in range(3)]
    memory = PeakRss([node.pid for node in nodes])
    try:
        extra = [x for s in settings for x in ("-c", s)]
        cli("server", "run", "--kit", str(kits / "server"), "--rounds", str(rounds), "--run-dir", str(tmp / "dep"),
            "--metrics-port", "0", *extra)
    finally:
        peak = memory.stop()
        for node in nodes:
            stop_pid(node.pid)
        subprocess.run([*FEDPROOF, "server", "stop", "--kit", str(kits / "server")], capture_output=True, env=ENV)
    return rows_of(tmp / "dep"), peak


def simulation(tmp: Path, rounds: int, settings: list[str]) -> list[dict]:
    flags = []
    for s in settings:
        key, value = s.split("=", 1)
        flags += [f"--{key}", value]
    cli("simulate", "--clients", "3", "--rounds", str(rounds), "--run-dir", str(tmp / "sim"),
        "--devnet-dir", str(tmp / "sim-chain"), "--num-cpus", "2", *flags)
    return rows_of(tmp / "sim")


def clientapp_start_seconds(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import fl_client.client_app"], check=True, env=ENV)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    args = parser.parse_args()
    settings = [f"local-epochs={args.local_epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulation(Path(tmp), args.rounds, settings)
        dep, peak = deployment(Path(tmp), args.rounds, settings)
        devnet_dir = Path(tmp) / "sim-chain"
        subprocess.run([*FEDPROOF, "devnet", "stop", "--data-dir", str(devnet_dir)], capture_output=True, env=ENV)
    start = clientapp_start_seconds()

    def mean(rows: list[dict], key: str) -> float:
        later = rows[1:] or rows
        return sum(r[key] or 0.0 for r in later) / len(later)

    print(f"\nSeconds per round (rounds 2+), 3 clients on loopback, real Fashion-MNIST, {args.local_epochs} local "
          "epoch(s), DP + HE + ledger; baseline = simulation\n")
    print("| mode | s/round | x simulation | client training s | encrypt + sign s | rest: messaging, process "
          "starts, aggregation, evaluation, ledger s | final accuracy |")
    print("|---|---|---|---|---|---|---|")
    base = mean(sim, "seconds")
    for name, rows in (("simulation (Ray)", sim), ("deployment (SuperLink + 3 SuperNodes, TLS)", dep)):
        total, train, secure = mean(rows, "seconds"), mean(rows, "client_train_seconds"), mean(
            rows, "client_secure_seconds")
        print(f"| {name} | {total:.1f} | {total / base:.2f} | {train:.1f} | {secure:.2f} | "
              f"{total - train - secure:.1f} | {rows[-1]['accuracy']:.4f} |")
    print(f"\nA ClientApp process start (Python + torch + fedproof imports) costs {start:.1f} s; deployment pays it "
          "for every message (train, evaluate, the key ceremony and decrypt for key holders), one message at a time per "
          "node, and Flower's SuperNodes and Grid poll every 3 s when idle.")
    print(f"Peak memory of one device (SuperNode + ClientApp process tree): {peak / 2**20:.0f} MB.")


if __name__ == "__main__":
    main()
