"""Prove where a model file came from, with the Python API behind `fedproof audit verify`.

    python examples/audit_a_model.py runs/<run-id>/model.safetensors [--ledger-url http://127.0.0.1:8545]

Uses the contract remembered by the local devnet (~/.local/share/fedproof/devnet) unless --contract is given.
"""

import argparse
from pathlib import Path

from ledger.audit import AuditFailure, verify_model
from ledger.contract import LedgerContract
from ledger.defaults import DEFAULT_DATA_DIR
from ledger.devnet import remembered_contract

parser = argparse.ArgumentParser()
parser.add_argument("model", type=Path)
parser.add_argument("--ledger-url", default="http://127.0.0.1:8545")
parser.add_argument("--contract")
args = parser.parse_args()

w3 = LedgerContract.connect(args.ledger_url)
contract = LedgerContract.at(w3, args.contract) if args.contract else remembered_contract(DEFAULT_DATA_DIR, w3)
if contract is None:
    raise SystemExit(f"no lineage contract is remembered for this chain in {DEFAULT_DATA_DIR}: pass --contract 0x...")
try:
    report = verify_model(contract, args.model, [args.model.parent / "ledger"])
except AuditFailure as failure:
    raise SystemExit(f"NOT VERIFIED: {failure}")
for event, bundle in report.rounds:
    clients = ", ".join(sorted(u.fields.client_id for u in bundle.updates))
    print(f"round {event.round} (block {event.block_number}): model {event.model_hash.hex()[:12]} "
          f"from {event.parent_model_hash.hex()[:12]}, signed updates from {clients}")
