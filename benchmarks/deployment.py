"""Deployment engine against simulation, on loopback, in one run: seconds per round and where they go.

Both runs: the demo model on the real Fashion-MNIST, 3 clients, DP, HE and the ledger on, the same seeds.
Deployment: a SuperLink with TLS and node authentication, the Fleet gateway and 3 SuperNodes with their
executors, from provisioned kits, as `fedproof server` / `fedproof client` start them. Simulation:
`fedproof simulate` (Ray). The breakdown per round comes from `metrics.jsonl` (`step_seconds`: the train
exchange (commitments), the reveal exchange, aggregation with its decryption and co-signing exchanges, central
evaluation); the breakdown per
message from the server's exchange log (push, replies) and each device executor's log (message pulled,
handler run, reply pushed). Rounds 2+ only: round 1 computes each client's scattering features.

    python benchmarks/deployment.py [--rounds 5] [--local-epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fedproof.base.processes import free_port, stop_pid
from measure import tree_rss

FEDPROOF = [sys.executable, "-m", "fedproof.cli"]
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "COLUMNS": "200"}


def cli(*args: str) -> str:
    done = subprocess.run([*FEDPROOF, *args], capture_output=True, text=True, env=ENV)
    if done.returncode != 0:
        sys.exit(f"fedproof {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


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


EXCHANGE = re.compile(r"DEBUG:(\S+): (\d+) messages pushed in ([\d.]+) s, (\d+) replies after ([\d.]+) s")
TASK = re.compile(r"task \d+: (\S+): completed \(message pulled in ([\d.]+) s, ran ([\d.]+) s, "
                  r"reply pushed in ([\d.]+) s\)")


def per_message(server_log: str, node_logs: list[str]) -> dict[str, dict[str, float]]:
    """Mean seconds per message kind after round 1: the server's exchange (push, all replies back) and, on the
    devices, pulling the message, running its handler and pushing the reply."""
    exchanges: dict[str, list[tuple[int, float, float]]] = {}
    for kind, count, push, _, total in EXCHANGE.findall(server_log):
        exchanges.setdefault(kind, []).append((int(count), float(push), float(total)))
    tasks: dict[str, list[tuple[float, float, float]]] = {}
    for line in sorted(line for log in node_logs for line in log.splitlines()):  # lines start with a timestamp
        if match := TASK.search(line):
            tasks.setdefault(match[1], []).append((float(match[2]), float(match[3]), float(match[4])))
    out = {}
    for kind in ("train", "query.reveal_update", "query.decrypt_share", "query.cosign_model"):
        rows = exchanges.get(kind, [])
        later, first = rows[1:], rows[0][0] if rows else 0
        done = tasks.get(kind, [])[first:]
        if not later or not done:
            continue
        out[kind] = {"exchange": mean([r[2] for r in later]), "push": mean([r[1] for r in later]),
                     "pull": mean([t[0] for t in done]), "run": max_mean(done, later), "reply": mean([t[2] for t in done])}
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def max_mean(done: list[tuple[float, float, float]], exchanges: list[tuple[int, float, float]]) -> float:
    """Mean over exchanges of the slowest handler in each (the one the exchange waits for)."""
    slowest, i = [], 0
    for count, _, _ in exchanges:
        batch = done[i:i + count]
        i += count
        if batch:
            slowest.append(max(t[1] for t in batch))
    return mean(slowest)


def deployment(tmp: Path, rounds: int, settings: list[str]) -> tuple[list[dict], int, dict]:
    port, devnet = free_port(), free_port()
    kits = tmp / "kits"
    password = tmp / "operator-password"
    password.write_text("benchmark operator\n")
    cli("provision", "--clients", "3", "--server-host", "127.0.0.1", "--port", str(port), "--out", str(kits),
        "--password-file", str(password))
    cli("server", "start", "--kit", str(kits / "server"), "--bind", "127.0.0.1", "--devnet-port", str(devnet),
        "--password-file", str(password))
    for i in range(3):  # the operator hands each device the ledger pin: a device signs for no ledger without it
        shutil.copy(kits / "server" / "trust.json", kits / f"client-{i}" / "trust.json")
    threads = str(max(1, (os.cpu_count() or 1) // 3))  # 3 SuperNodes share this host: do not oversubscribe it
    logs = [tmp / f"node-{i}.log" for i in range(3)]
    nodes = [subprocess.Popen([*FEDPROOF, "client", "--kit", str(kits / f"client-{i}"), "--port", str(free_port()),
                               "--threads", threads],
                              env=ENV, stdout=open(logs[i], "wb"), stderr=subprocess.STDOUT, start_new_session=True)
             for i in range(3)]
    memory = PeakRss([node.pid for node in nodes])
    try:
        extra = [x for s in settings for x in ("-c", s)]
        cli("server", "run", "--kit", str(kits / "server"), "--rounds", str(rounds), "--run-dir", str(tmp / "dep"),
            "--metrics-port", "0", *extra)
        # the exchange lines are in Flower's log of the run, which `server run` keeps in the kit's state
        server_log = "\n".join(p.read_text(errors="replace") for p in (kits / "server" / "state" / "logs").glob("*.log"))
    finally:
        peak = memory.stop()
        for node in nodes:
            stop_pid(node.pid)
        subprocess.run([*FEDPROOF, "server", "stop", "--kit", str(kits / "server")], capture_output=True, env=ENV)
    return rows_of(tmp / "dep"), peak, per_message(server_log, [log.read_text(errors="replace") for log in logs])


def simulation(tmp: Path, rounds: int, settings: list[str]) -> list[dict]:
    flags = []
    for s in settings:
        key, value = s.split("=", 1)
        flags += [f"--{key}", value]
    cli("simulate", "--clients", "3", "--rounds", str(rounds), "--run-dir", str(tmp / "sim"),
        "--devnet-dir", str(tmp / "sim-chain"), "--num-cpus", "2", *flags)
    return rows_of(tmp / "sim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=1)
    args = parser.parse_args()
    settings = [f"local-epochs={args.local_epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulation(Path(tmp), args.rounds, settings)
        dep, peak, messages = deployment(Path(tmp), args.rounds, settings)
        devnet_dir = Path(tmp) / "sim-chain"
        subprocess.run([*FEDPROOF, "devnet", "stop", "--data-dir", str(devnet_dir)], capture_output=True, env=ENV)

    def later(rows: list[dict], value) -> float:
        return mean([value(r) or 0.0 for r in rows[1:] or rows])

    print(f"\nSeconds per round (rounds 2-{args.rounds}), 3 clients on loopback, real Fashion-MNIST, "
          f"{args.local_epochs} local epoch(s), DP + threshold HE + ledger; baseline = simulation\n")
    print("| mode | s/round | x simulation | train exchange s | of which client training s | reveal exchange s "
          "| aggregation s (decryption + co-signing exchanges) | central evaluation s | final accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = later(sim, lambda r: r["seconds"])
    for name, rows in (("simulation (Ray)", sim), ("deployment (SuperLink + 3 SuperNodes, TLS)", dep)):
        total = later(rows, lambda r: r["seconds"])
        step = {k: later(rows, lambda r, k=k: r.get("step_seconds", {}).get(k)) for k in ("train", "reveal",
                                                                                          "central")}
        step["aggregate"] = later(rows, lambda r: sum(r.get("step_seconds", {}).get(k, 0.0)
                                                      for k in ("sum", "decrypt", "co-sign")))
        print(f"| {name} | {total:.2f} | {total / base:.2f} | {step['train']:.2f} | "
              f"{later(rows, lambda r: r['client_train_seconds']):.2f} | {step['reveal']:.2f} | "
              f"{step['aggregate']:.2f} | "
              f"{step['central']:.2f} | {rows[-1]['accuracy']:.4f} |")
    print("\nDeployment, per message (means over rounds 2+; an exchange waits for its slowest device):\n")
    print("| message | exchange s (server: push to last reply) | server push s | device: message pulled s (from "
          "the SuperNode, as the upload arrives) | device: handler s (slowest) | device: reply pushed s | rest: "
          "polls, SuperNode <-> SuperLink s |")
    print("|---|---|---|---|---|---|---|")
    for kind, m in messages.items():
        rest = m["exchange"] - m["pull"] - m["run"] - m["reply"]
        print(f"| {kind} | {m['exchange']:.2f} | {m['push']:.2f} | {m['pull']:.2f} | {m['run']:.2f} | "
              f"{m['reply']:.2f} | {rest:.2f} |")
    print(f"\nPeak memory of one device (SuperNode + its executor): {peak / 2**20:.0f} MB.")


if __name__ == "__main__":
    main()
