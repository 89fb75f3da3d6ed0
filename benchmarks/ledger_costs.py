"""Ledger costs on a real anvil devnet: gas per round against the number of clients, seconds per round record,
and audit query time over a long chain of rounds.

Baselines in the same run: gas of a round with 10 clients (a round with 100 must cost the same: only a
Merkle root goes on chain; the clients' co-signatures of each model, a majority of the key's holders, travel in
the bundle whose hash is recorded); a single `eth_blockNumber` round trip for query latency. Each run is started
once (`startRun`, its initial model) before its first round.

    python benchmarks/ledger_costs.py [--rounds 1000] [--clients 10 100]
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import statistics
import tempfile
import time
from pathlib import Path

from ledger.audit import lineage
from ledger.bundle import Cosignature, SignedUpdate, RoundBundle
from ledger.contract import LedgerContract, RoundRecord
from ledger.manifest import DeploymentKey
from ledger.release import Action, ReleaseStatement, SignedRelease
from ledger.devnet import Devnet
from ledger.signing import SignedFields, SigningKey, payload_digest, run_id_hash, scale_epsilon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle_for(contract: LedgerContract, run: str, rnd: int, parent: bytes, keys: list[SigningKey]) -> RoundBundle:
    updates = []
    for i, key in enumerate(keys):
        fields = SignedFields(chain_id=contract.chain_id, contract=bytes.fromhex(contract.address[2:]), run_id=run,
                              round=rnd, client_id=str(i), payload_sha256=payload_digest([b"%d-%d" % (rnd, i)]),
                              num_examples=5400, epsilon_scaled=scale_epsilon(0.6 * rnd))
        updates.append(SignedUpdate(fields, key.public_key, key.sign(fields)))
    model = hashlib.sha256(b"%s-%d" % (run.encode(), rnd)).digest()
    t = len(keys) // 2 + 1
    bundle = RoundBundle(run, rnd, contract.chain_id, bytes.fromhex(contract.address[2:]), parent, model,
                         tuple(updates), genesis=contract.genesis, threshold=t, holders=len(keys))
    return RoundBundle(**{**bundle.__dict__, "cosignatures": tuple(
        Cosignature(str(i), keys[i].public_key, keys[i].sign(bundle.statement(str(i)))) for i in range(t))})


def record(contract: LedgerContract, bundle: RoundBundle):
    return contract.record_round(RoundRecord(
        run_id_hash(bundle.run_id), bundle.round, bundle.parent_model_hash, bundle.model_hash, bundle.merkle_root,
        len(bundle.updates), bundle.epsilon_max_scaled, bundle.sha256))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chain = Devnet(Path(tmp), port=free_port())
        chain.start()
        try:
            contract = LedgerContract.deploy(LedgerContract.connect(chain.url))
            keys = [SigningKey.generate() for _ in range(max(args.clients))]
            print(f"\nGas and time per recorded round (anvil {chain.url}; baseline = {args.clients[0]} clients)\n")
            print("| clients per round | gas per round (steady state) | x baseline | s per record (median) |")
            print("|---|---|---|---|")
            base, start_gas, bundle_bytes = None, 0, {}
            for clients in args.clients:
                run, parent, gas, secs = f"gas-{clients}", hashlib.sha256(b"init").digest(), [], []
                start_gas = contract.start_run(run_id_hash(run), parent).gas_used
                for rnd in range(1, 6):
                    bundle = bundle_for(contract, run, rnd, parent, keys[:clients])
                    started = time.perf_counter()
                    receipt = record(contract, bundle)
                    secs.append(time.perf_counter() - started)
                    gas.append(receipt.gas_used)
                    parent = bundle.model_hash
                bundle_bytes[clients] = len(bundle.to_bytes())
                steady = gas[-1]
                base = base or steady
                print(f"| {clients} | {steady:,} | {steady / base:.3f} | {statistics.median(secs):.3f} |", flush=True)
            print(f"\nstartRun (once per run): {start_gas:,} gas; off-chain bundle per round with its co-signatures: "
                  + ", ".join(f"{n} clients {b / 1024:.1f} KiB" for n, b in bundle_bytes.items()))
            release_gas = []
            for i in range(2):
                artifact = hashlib.sha256(f"artifact-{i}".encode()).digest()
                deployed = contract.record_deployment(parent, artifact, run_id_hash(run), 5, "onnx-int8-qdq").gas_used
                statement = ReleaseStatement(*contract.domain, i + 1, Action.PROMOTE, "production", artifact)
                release_gas.append(contract.record_release(SignedRelease.signed_by(DeploymentKey.generate(), statement)).gas_used)
            print(f"recordDeployment: {deployed:,} gas; recordRelease (signed statement, 64-byte signature): "
                  f"{release_gas[-1]:,} gas")

            run, parent, secs = "long", hashlib.sha256(b"init").digest(), []
            contract.start_run(run_id_hash(run), parent)
            for rnd in range(1, args.rounds + 1):
                bundle = bundle_for(contract, run, rnd, parent, keys[:10])
                started = time.perf_counter()
                record(contract, bundle)
                secs.append(time.perf_counter() - started)
                parent = bundle.model_hash
            w3 = contract.w3
            started = time.perf_counter()
            for _ in range(20):
                w3.eth.block_number
            rtt = (time.perf_counter() - started) / 20
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                steps = lineage(contract, parent)
                timings.append(time.perf_counter() - started)
            assert len(steps) == args.rounds
            print(f"\nAudit over a chain of {args.rounds} recorded rounds (10 clients each); baseline = one "
                  "JSON-RPC round trip\n")
            print("| query | seconds (best of 3) | x one round trip |")
            print("|---|---|---|")
            print(f"| one JSON-RPC round trip (eth_blockNumber) | {rtt:.4f} | 1 |")
            print(f"| lineage of the final model ({args.rounds} rounds back) | {min(timings):.3f} | "
                  f"{min(timings) / rtt:.0f} |")
            print(f"\nrecording {args.rounds} rounds took {sum(secs):.1f} s "
                  f"({statistics.median(secs) * 1000:.1f} ms median per record)")
        finally:
            chain.stop()


if __name__ == "__main__":
    main()
