"""``fedproof release promote|rollback|retire`` (the operator), ``fedproof edge follow`` (a device) and
``fedproof audit releases`` (anyone): staged releases as signed statements on chain (:mod:`ledger.release`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from fedproof.cli.output import console, fail
from fedproof.cli.audit import ContractOpt, DevnetDir, LedgerUrl, audit_app, open_contract
from fedproof.cli.deploy import (
    DEFAULT_INSTALL,
    DEFAULT_REGISTRY,
    AppGraphs,
    app_graph_dirs,
    deployment_key,
    edge_app,
    operator_ledger,
)
from fedproof.base.errors import FedproofError
from ledger.errors import LedgerError

release_app = typer.Typer(help="Staged releases of deployed artifacts: promote (canary), roll back, retire.",
                          no_args_is_help=True)

Registry = Annotated[Path, typer.Option(help="Model registry directory.")]
Operator = Annotated[Optional[Path], typer.Option(
    help="The server kit's operator directory (<kit>/operator): its keystore records, its deployment key signs "
         "(default: the local devnet's simulation operator).")]
PasswordFile = Annotated[Optional[Path], typer.Option(help="The operator password's file (default: prompt).")]
TrackingUri = Annotated[Optional[str], typer.Option(
    help="MLflow registry whose aliases mirror the stages (default: a file store <registry>/mlruns; 'off').")]
Channel = Annotated[str, typer.Option(help="Release channel: staging or production.")]
TrustOpt = Annotated[Optional[Path], typer.Option(
    help="The pin (a kit's trust.json: chain, contract, operator key, RPC endpoints); default: the local devnet's.")]


def _release(action_name: str, artifact: str, channel: str, canary: float, registry: Path, operator: Path | None,
             password_file: Path | None, tracking_uri: str | None, ledger_url: str | None, contract: str | None,
             devnet_dir: Path | None) -> None:
    from fl_server.release import release, stage_of
    from fl_server.tracking import mirror_stages
    from ledger.release import ALL, Action

    try:
        if not 0 < canary <= 100:
            raise FedproofError(f"--canary is a share of the channel's devices in percent, in (0, 100], not {canary}")
        chain, key = operator_ledger(operator, password_file, ledger_url, contract, devnet_dir)
        done = release(registry, key, chain, Action[action_name.upper()], bytes.fromhex(artifact), channel,
                       min(ALL, round(canary * 100)))
        stages = stage_of(chain, key.public_key)
    except (FedproofError, LedgerError, OSError, ValueError) as exc:
        raise fail(exc)
    s = done.release.statement
    share = "" if s.canary_bp == ALL else f" to {s.canary_bp / 100:g}% of its devices"
    console.print(f"release {s.sequence}: {action_name} {artifact[:16]}… on {s.channel}{share}, signed and recorded "
                  f"in tx {done.receipt.tx_hash} (block {done.receipt.block_number})")
    uri = tracking_uri or (registry / "mlruns").resolve().as_uri()
    problem = mirror_stages(uri, stages, registry)
    if uri != "off":
        console.print(f"MLflow registry aliases mirror the stages at {uri}" if not problem else
                      f"[yellow]MLflow registry not updated ({problem}); the chain has the release[/]")


@release_app.command("promote")
def release_promote(
    artifact: Annotated[str, typer.Argument(help="The deployed artifact's SHA-256 (hex).")],
    channel: Channel = "production",
    canary: Annotated[float, typer.Option(help="Percent of the channel's devices that switch (chosen by device "
                                               "id); the rest keep what they run.")] = 100.0,
    registry: Registry = DEFAULT_REGISTRY, operator: Operator = None, password_file: PasswordFile = None,
    tracking_uri: TrackingUri = None, ledger_url: LedgerUrl = None, contract: ContractOpt = None,
    devnet_dir: DevnetDir = None,
) -> None:
    """Promote a deployed artifact on a channel, to a canary share of its devices or to all of them."""
    _release("promote", artifact, channel, canary, registry, operator, password_file, tracking_uri, ledger_url,
             contract, devnet_dir)


@release_app.command("rollback")
def release_rollback(
    artifact: Annotated[str, typer.Argument(help="An artifact the channel ran before (SHA-256, hex).")],
    channel: Channel = "production",
    registry: Registry = DEFAULT_REGISTRY, operator: Operator = None, password_file: PasswordFile = None,
    tracking_uri: TrackingUri = None, ledger_url: LedgerUrl = None, contract: ContractOpt = None,
    devnet_dir: DevnetDir = None,
) -> None:
    """Send every device of a channel back to an artifact it ran before; the one it replaces is retired."""
    _release("rollback", artifact, channel, 100.0, registry, operator, password_file, tracking_uri, ledger_url,
             contract, devnet_dir)


@release_app.command("retire")
def release_retire(
    artifact: Annotated[str, typer.Argument(help="The artifact to take out of service (SHA-256, hex).")],
    registry: Registry = DEFAULT_REGISTRY, operator: Operator = None, password_file: PasswordFile = None,
    tracking_uri: TrackingUri = None, ledger_url: LedgerUrl = None, contract: ContractOpt = None,
    devnet_dir: DevnetDir = None,
) -> None:
    """Retire an artifact no channel runs: no device installs it again unless it is promoted anew."""
    _release("retire", artifact, "*", 100.0, registry, operator, password_file, tracking_uri, ledger_url,
             contract, devnet_dir)


def _pin(trust: Path | None, devnet_dir: Path | None = None):
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.trust import LedgerTrust

    return LedgerTrust.load(trust or Path(devnet_dir or DEFAULT_DATA_DIR).expanduser() / "trust.json")


@edge_app.command("follow")
def edge_follow(
    channel: Channel = "production",
    device_id: Annotated[Optional[str], typer.Option(
        help="This device's id, which decides canary membership (default: a random one, kept in the install "
             "directory).")] = None,
    registry: Registry = DEFAULT_REGISTRY,
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its models.")] = DEFAULT_INSTALL,
    trust: TrustOpt = None,
    rpc: Annotated[Optional[list[str]], typer.Option(help="RPC endpoint (repeatable; all must agree).")] = None,
    every: Annotated[float, typer.Option(help="Check again every this many seconds (0: once).")] = 0.0,
    app: AppGraphs = None,
) -> None:
    """Run what the channel's newest release statement says this device runs: only statements on the pinned
    chain, signed by the pinned operator key, newer than the last acted on; the previous model stays installed."""
    from fl_client.edge import connect, follow

    while True:
        try:
            pin = _pin(trust)
            result = follow(channel, registry, install_dir.expanduser(), pin, connect(pin, rpc or ()), device_id,
                            app_graphs=app_graph_dirs(app))
        except (FedproofError, LedgerError) as exc:
            if not every:
                raise fail(exc)
            console.print(f"[red]error:[/] {exc}")
        else:
            for reason in result.ignored:
                console.print(f"[yellow]{reason}[/]")
            now = result.installed
            what = f"{now.artifact_sha256[:16]}… ({now.version})" if now else "no model (none released to it yet)"
            how = {"installed": "verified and installed", "switched": "switched back (kept copy)"}.get(
                result.changed, "unchanged")
            seq = result.statement.sequence if result.statement else 0
            console.print(f"{channel}: release {seq}: runs {what}, {how}")
        if not every:
            return
        time.sleep(every)


def release_rows(contract, operator_key: bytes, artifact: bytes | None = None) -> tuple[list[dict], list[str]]:
    """The release history as the chain records it (the operator's statements only), with each artifact's stage."""
    from fl_server.release import history
    from ledger.release import stages

    paired, ignored = history(contract, operator_key)
    stage = stages([s for _, s in paired])
    rows = [{"sequence": s.sequence, "action": s.action.name.lower(), "channel": s.channel,
             "artifact": s.artifact.hex(), "replaces": s.previous.hex() if any(s.previous) else "",
             "canary_percent": s.canary_bp / 100, "block": e.block_number, "tx": e.tx_hash,
             "stage_now": stage.get(s.artifact, "")}
            for e, s in paired if artifact is None or artifact in (s.artifact, s.previous)]
    return rows, ignored


def print_releases(contract, operator_key: bytes, artifact: bytes | None = None, as_json: bool = False) -> None:
    rows, ignored = release_rows(contract, operator_key, artifact)
    if as_json:
        print(json.dumps({"releases": rows, "ignored": ignored}, indent=2))
        return
    title = f"Releases of {artifact.hex()[:16]}…" if artifact else "Releases"
    table = Table(title=f"{title} (signed by operator key {operator_key.hex()[:16]}…)", box=box.SIMPLE_HEAD)
    for column in ("seq", "action", "channel", "artifact", "replaces", "canary", "block", "stage"):
        table.add_column(column, min_width=10 if column in ("channel", "stage") else None)
    for r in rows:
        table.add_row(str(r["sequence"]), r["action"], r["channel"], r["artifact"][:8], r["replaces"][:8],
                      f"{r['canary_percent']:g}%", str(r["block"]), r["stage_now"])
    console.print(table)
    for reason in ignored:
        console.print(f"[yellow]{reason}[/]")


def release_and_show(contract, registry: Path, artifact: str, run_config: dict) -> None:
    """The demo's last step: promote the deployed artifact to production with the simulation operator's key (the
    key ``deploy`` signed its manifest with) and show its release record as the chain has it."""
    from fl_server.release import release
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.release import Action

    saved = Path(str(run_config["devnet-dir"])) if run_config.get("devnet-dir") else None
    key = deployment_key(None, None, Path(saved or DEFAULT_DATA_DIR).expanduser())
    try:
        done = release(registry, key, contract, Action.PROMOTE, bytes.fromhex(artifact))
    except (FedproofError, LedgerError) as exc:
        console.print(f"[yellow]not promoted:[/] {exc}")
        return
    console.print(f"promoted {artifact[:16]}… to production: release {done.release.statement.sequence}, tx "
                  f"{done.receipt.tx_hash}; devices following the channel switch with `fedproof edge follow`")
    print_releases(contract, key.public_key, bytes.fromhex(artifact))


@audit_app.command("releases")
def audit_releases(
    artifact: Annotated[Optional[str], typer.Argument(help="An artifact's SHA-256 (hex); default: every one.")] = None,
    trust: TrustOpt = None, ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Release history: every promotion, canary, rollback and retirement on chain that the pinned operator key
    signed (records it did not sign are listed as ignored), and each artifact's stage now."""
    try:
        pin = _pin(trust, devnet_dir)
        chain = open_contract(ledger_url or (pin.rpc_urls[0] if pin.rpc_urls else None),
                              contract or pin.contract_address, devnet_dir)
        print_releases(chain, pin.deployment_key, bytes.fromhex(artifact) if artifact else None, as_json)
    except (FedproofError, LedgerError, ValueError) as exc:
        raise fail(exc)
