"""``fedproof audit ...`` and ``fedproof ledger flush``: read (and catch up) the on-chain lineage.

The ledger is the local devnet's (``--devnet-dir``) unless ``--ledger-url`` names another node; the contract
is the one remembered for that chain unless ``--contract`` gives it. Bundles are found by content in
``--bundles`` directories (default: a model file's own run directory and every ``runs/*/ledger`` here).
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Optional

import typer
from rich.table import Table

from fedproof.cli.output import console, fail
from fedproof.base.errors import FedproofError
from fedproof.cli.output import show_table
from ledger.errors import LedgerError

audit_app = typer.Typer(help="Audit the on-chain lineage: models, clients, rounds.", no_args_is_help=True)
ledger_app = typer.Typer(help="The run's ledger records.", no_args_is_help=True)

LedgerUrl = Annotated[Optional[str], typer.Option(help="Ethereum JSON-RPC URL (default: the local devnet).")]
ContractOpt = Annotated[Optional[str], typer.Option(help="Lineage contract address (default: remembered).")]
DevnetDir = Annotated[Optional[Path], typer.Option(help="Local devnet's data directory.")]
Bundles = Annotated[Optional[list[Path]], typer.Option(help="Directories holding round bundles (repeatable).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PinOpt = Annotated[Optional[Path], typer.Option(
    "--pin", help="A trust.json (a kit's, or a device's): ask its RPC endpoint for its contract, and refuse any "
                  "other chain or contract.")]


def open_contract(ledger_url: str | None = None, contract: str | None = None, devnet_dir: Path | None = None,
                  run_config: Mapping[str, object] | None = None, pin: Path | None = None):
    """The lineage contract: options given win, then a pin's RPC endpoint and contract (``--pin trust.json``), then
    a run's saved settings (``run.json``), then the local devnet's. With a pin, the node must serve the pinned
    chain and contract: anything else is the wrong ledger, and said so."""
    trust = None
    if pin is not None:
        from ledger.trust import LedgerTrust

        trust = LedgerTrust.load(pin)
        ledger_url = ledger_url or (trust.rpc_urls[0] if trust.rpc_urls else None)
        contract = contract or trust.contract_address
        if not ledger_url:
            raise FedproofError(f"{pin} names no RPC endpoint: pass --ledger-url")
    if trust is not None:
        from ledger.audit import check_pinned
        from ledger.contract import LedgerContract

        found = LedgerContract.at(LedgerContract.connect(ledger_url), contract)  # type: ignore[arg-type]
        check_pinned(found, trust)
        return found
    saved = run_config or {}
    ledger_url = ledger_url or str(saved.get("ledger-url") or "") or None
    contract = contract or str(saved.get("ledger-contract") or "") or None
    devnet_dir = devnet_dir or (Path(str(saved["devnet-dir"])) if saved.get("devnet-dir") else None)
    from ledger.contract import LedgerContract
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.devnet import Devnet, remembered_contract

    data_dir = Path(devnet_dir or DEFAULT_DATA_DIR).expanduser()
    w3 = LedgerContract.connect(ledger_url or Devnet(data_dir).url)
    if contract:
        return LedgerContract.at(w3, contract)
    found = remembered_contract(data_dir, w3)
    if found is None:
        where = getattr(w3.provider, "endpoint_uri", "?")
        raise LedgerError(f"no lineage contract remembered in {data_dir} for the chain at {where}: name the ledger "
                          "with --pin <trust.json>, or --ledger-url and --contract ADDRESS")
    return found


def _bundle_dirs(given: list[Path] | None, near: Path | None = None) -> list[Path]:
    """The directories given; or else the ``ledger/`` of the run directory a model file sits in (at any depth:
    ``models/round-N.safetensors``, MLflow's ``mlruns/.../artifacts/``), a published registry's ``bundles/`` here,
    and every ``runs/*/ledger`` here."""
    if given:
        return list(given)
    dirs: list[Path] = []
    if near is not None:
        dirs = [p / "ledger" for p in Path(near).resolve().parents if (p / "ledger").is_dir()][:1]
    dirs += [p for p in (Path.cwd() / "registry" / "bundles",) if p.is_dir()]
    return dirs + sorted(Path.cwd().glob("runs/*/ledger"))


def _eps(scaled: int) -> str:
    from ledger.signing import EPSILON_SCALE, NO_DP

    return "-" if scaled == NO_DP else f"{scaled / EPSILON_SCALE:.3f}"


def _key_row(key) -> dict | None:
    """A key statement found on chain (``RecordedKey``), as the audit commands print it; None: no valid one."""
    if key is None or key.signed is None:
        return None
    s = key.signed.statement
    return {"key_sha256": key.key_id.hex(), "threshold": s.threshold, "holders": list(s.holders),
            "first_round": s.first_round, "block": key.block_number, "tx": key.tx_hash}


def print_lineage(contract, model: bytes, bundle_dirs: list[Path], as_json: bool = False,
                  last: int | None = None) -> None:
    """The chain of rounds behind ``model``, with contributors per round when their bundles are at hand; in a
    table, the ``last`` rounds only (default: all), and a count of the rest."""
    from ledger.audit import ModelNotRecorded, deployment_of, keys_in_force, lineage
    from ledger.bundle import BundleError, find_bundle

    deployed = None
    try:
        lineage(contract, model)
    except ModelNotRecorded:
        deployed = deployment_of(contract, model)
        if deployed is None:
            raise
        model = deployed.model_hash
    rows, run_keys = [], {}
    for event in lineage(contract, model):
        key = None
        try:
            bundle = find_bundle(bundle_dirs, event.bundle_hash)
            run, clients = bundle.run_id, sorted(u.fields.client_id for u in bundle.updates)
            if run not in run_keys:  # the run's name (from its bundle) is what its key holders signed
                run_keys[run] = keys_in_force(contract, run)
            key = run_keys[run].in_force(event.round, event.block_number)
        except BundleError:
            run, clients = event.run_id.hex()[:12], None
        rows.append({"run": run, "round": event.round, "model_hash": event.model_hash.hex(),
                     "parent_model_hash": event.parent_model_hash.hex(), "updates": event.num_updates,
                     "contributors": clients, "epsilon_max": _eps(event.epsilon_max_scaled),
                     "block": event.block_number, "tx": event.tx_hash, "key": _key_row(key)})
    if as_json:
        print(json.dumps(rows if deployed is None else {
            "artifact": deployed.artifact_hash.hex(), "target": deployed.target, "model_hash": model.hex(),
            "deployment_block": deployed.block_number, "deployment_tx": deployed.tx_hash, "lineage": rows}, indent=2))
        return
    if deployed is not None:
        console.print(f"artifact {deployed.artifact_hash.hex()} ({deployed.target}) was deployed in block "
                      f"{deployed.block_number} (tx {deployed.tx_hash}) from model {model.hex()}")
    cells = []
    for r in rows[:last]:
        who = "(bundle not found)" if r["contributors"] is None else ",".join(r["contributors"])
        key = "-" if r["key"] is None else f"{r['key']['threshold']} of {len(r['key']['holders'])}"
        cells.append([str(r["round"]), r["model_hash"][:12], r["parent_model_hash"][:12], str(r["updates"]),
                      r["epsilon_max"], key, who, str(r["block"]), r["run"]])
    show_table(f"Lineage of model {model.hex()[:16]}… (newest first)",
               ["round", "model", "parent", "updates", "eps max", "key (chain)", "contributors", "block", "run"],
               cells, left=(1, 2, 5, 6, 8))
    if last is not None and len(rows) > last:
        console.print(f"… and {len(rows) - last} earlier rounds (all of them: fedproof audit lineage {model.hex()})")
    console.print(f"initial model: {rows[-1]['parent_model_hash']}")


@audit_app.command("lineage")
def audit_lineage(model: Annotated[str, typer.Argument(help="Model file or its SHA-256 (hex).")],
                  ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
                  bundles: Bundles = None, as_json: AsJson = False, pin: PinOpt = None) -> None:
    """The chain of rounds back to the initial model, with contributors and epsilon per round."""
    from ledger.audit import model_hash

    try:
        path = Path(model) if Path(model).is_file() else None
        print_lineage(open_contract(ledger_url, contract, devnet_dir, pin=pin), model_hash(model),
                      _bundle_dirs(bundles, path), as_json)
    except (LedgerError, FedproofError) as exc:
        raise fail(exc)


@audit_app.command("client")
def audit_client(client_id: str, ledger_url: LedgerUrl = None, contract: ContractOpt = None,
                 devnet_dir: DevnetDir = None, bundles: Bundles = None, as_json: AsJson = False,
                 pin: PinOpt = None) -> None:
    """Rounds a client contributed to, and its cumulative epsilon as it signed it."""
    from ledger.audit import client_contributions
    from ledger.signing import client_id_hash

    try:
        ledger = open_contract(ledger_url, contract, devnet_dir, pin=pin)
        found = client_contributions(ledger, client_id, _bundle_dirs(bundles))
        events = ledger.client_events(client_id_hash(client_id))
    except (LedgerError, FedproofError) as exc:
        raise fail(exc)
    status = "never registered" if not events else ("revoked" if events[-1].kind == "revoked" else "registered")
    rows = [{"run": c.run_id, "round": c.round, "examples": c.num_examples, "epsilon": c.epsilon,
             "model_hash": c.model_hash.hex()} for c in found]
    if as_json:
        print(json.dumps({"client_id": client_id, "status": status, "contributions": rows}, indent=2))
        return
    table = Table(title=f"Client {client_id} ({status}): {len(rows)} contributions")
    for column in ("run", "round", "examples", "epsilon so far", "model"):
        table.add_column(column)
    for r in rows:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.3f}"
        table.add_row(r["run"], str(r["round"]), str(r["examples"]), eps, r["model_hash"][:12])
    console.print(table)


@audit_app.command("round")
def audit_round(run_id: str, server_round: Annotated[int, typer.Argument(metavar="ROUND")],
                ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
                as_json: AsJson = False, pin: PinOpt = None) -> None:
    """One round's record, with its transaction and block."""
    from ledger.audit import round_record

    try:
        event = round_record(open_contract(ledger_url, contract, devnet_dir, pin=pin), run_id, server_round)
    except (LedgerError, FedproofError) as exc:
        raise fail(exc)
    row = {"run": run_id, "round": event.round, "model_hash": event.model_hash.hex(),
           "parent_model_hash": event.parent_model_hash.hex(), "updates_merkle_root": event.updates_merkle_root.hex(),
           "updates": event.num_updates, "epsilon_max": _eps(event.epsilon_max_scaled),
           "bundle_hash": event.bundle_hash.hex(), "tx": event.tx_hash, "block": event.block_number,
           "block_hash": event.block_hash}
    if as_json:
        print(json.dumps(row, indent=2))
        return
    table = Table(title=f"Run {run_id}, round {server_round}", show_header=False)
    for key, value in row.items():
        table.add_row(key, str(value))
    console.print(table)


@audit_app.command("verify")
def audit_verify(model: Annotated[Path, typer.Argument(help="The model file to verify.")],
                 ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
                 bundles: Bundles = None, as_json: AsJson = False, pin: PinOpt = None,
                 min_cosigners: Annotated[int, typer.Option(
                     help="Fewest client co-signatures a round may carry (also at least the key's t).")] = 2,
                 trust_server: Annotated[bool, typer.Option(
                     help="Accept rounds no client co-signed (runs without threshold HE): the server's word.")] = False,
                 ) -> None:
    """Prove a model file's history: every round of its runs in order from a registered initial model, every
    bundle, Merkle proof and update signature, and t client co-signatures of each new model."""
    from ledger.audit import verify_model

    try:
        chain = open_contract(ledger_url, contract, devnet_dir, pin=pin)
        report = verify_model(chain, model, _bundle_dirs(bundles, model), min_cosigners=min_cosigners,
                              trust_server=trust_server)
    except (LedgerError, FedproofError) as exc:
        if as_json:
            print(json.dumps({"verified": False, "error": str(exc)}))
            raise typer.Exit(code=1) from exc
        console.print(f"[red]NOT VERIFIED:[/] {exc}")
        raise typer.Exit(code=1) from exc
    keys: dict[bytes, dict] = {}  # the keys the co-signers decrypted under, as the chain states them
    for event, bundle in reversed(report.rounds):
        key = report.keys.get((event.run_id, event.round))
        if key is not None:
            keys.setdefault(key.key_id, {"run": bundle.run_id, **_key_row(key), "rounds": []})["rounds"].append(
                event.round)
    if as_json:
        print(json.dumps({"verified": True, "model_hash": report.model_hash.hex(), "rounds": len(report.rounds),
                          "updates": report.updates, "keys": list(keys.values())}))
        return
    cosigned = sum(len(b.cosignatures) for _, b in report.rounds)
    console.print(f"[green]verified[/]: model {report.model_hash.hex()} — {len(report.rounds)} rounds, "
                  f"{report.updates} signed updates, {cosigned} client co-signatures of the models; every bundle, "
                  "Merkle proof and signature checked against the chain")
    for k in keys.values():
        console.print(f"  run {k['run']}, rounds {', '.join(map(str, k['rounds']))}: key {k['key_sha256'][:16]}…, "
                      f"{k['threshold']} of {len(k['holders'])} holders ({', '.join(k['holders'])}), signed by "
                      f"every holder, recorded in block {k['block']}")


@ledger_app.command("flush")
def ledger_flush(run: Annotated[Path, typer.Argument(help="A run directory (runs/<run-id>).")],
                 ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None) -> None:
    """Send a run's round records that could not reach the ledger during the run."""
    from fedproof.core.rundir import RunDirectory
    from ledger.outbox import Outbox

    try:
        config = RunDirectory(run).config().to_mapping()
        left = Outbox(run / "ledger").flush(open_contract(ledger_url, contract, devnet_dir, config))
    except (LedgerError, FedproofError, OSError, KeyError, ValueError) as exc:
        raise fail(exc)
    if left:
        console.print(f"[yellow]{left} record(s) still pending:[/] the ledger is unreachable")
        raise typer.Exit(code=1)
    console.print("all round records are on chain")
