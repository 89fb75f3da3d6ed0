"""``fedproof devnet start|stop|status``: the local anvil chain that holds the audit ledger.

Wired into the main CLI with ``app.add_typer(devnet_app, name="devnet")``. Ledger errors print as one line
(``error: ...``) with exit code 2, like the rest of the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedproof.cli.output import console, fail
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger.devnet import DevnetStatus

# ledger.devnet (and web3, ~1 s to import) is imported inside the commands, so that wiring this sub-app into the
# main CLI does not slow down every other fedproof command.

from ledger.defaults import DEFAULT_DATA_DIR

devnet_app = typer.Typer(
    name="devnet",
    help="The local Ethereum devnet (anvil) that holds the audit ledger: start, stop, status.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDirOption = Annotated[
    Path, typer.Option("--data-dir", help="Where the chain, pidfile, log and deployment record live.")
]
PortOption = Annotated[Optional[int], typer.Option(
    "--port", help="JSON-RPC port on 127.0.0.1 (default: the directory's own; 8545 for the default directory).")]


def _show(status: DevnetStatus, contract_address: str | None = None) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    state = "[green]running[/]" if status.running else "[yellow]not running[/]"
    table.add_row("state", state)
    table.add_row("data dir", escape(str(status.data_dir)))
    table.add_row("port", str(status.port) if status.port else "none yet (chosen at first start)")
    if status.url:
        table.add_row("url", status.url)
    if status.pid is not None:
        table.add_row("pid", str(status.pid))
    if status.chain_id is not None:
        table.add_row("chain id", str(status.chain_id))
    if status.block_number is not None:
        table.add_row("block", str(status.block_number))
    if contract_address:
        table.add_row("ledger contract", contract_address)
    console.print(table)


@devnet_app.command()
def start(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    port: PortOption = None,
    state_interval: Annotated[
        int, typer.Option(help="Seconds between state saves: the most a crash (kill -9) can lose.")
    ] = 1,
    deploy: Annotated[
        bool, typer.Option("--deploy/--no-deploy", help="Deploy the ledger contract if this chain has none.")
    ] = True,
) -> None:
    """Start the devnet in the background (or report the one already running) and deploy the ledger contract."""
    from ledger.contract import LedgerContract
    from ledger.devnet import Devnet, ensure_contract

    try:
        devnet = Devnet(data_dir, port=port, state_interval=state_interval)
        status = devnet.start()
        address = None
        if deploy:
            address = ensure_contract(LedgerContract.connect(devnet.url), devnet.data_dir).address
    except LedgerError as exc:
        raise fail(exc) from None
    _show(status, address)


@devnet_app.command()
def stop(data_dir: DataDirOption = DEFAULT_DATA_DIR, port: PortOption = None) -> None:
    """Stop the devnet; it saves its chain first, and the next start continues it."""
    from ledger.devnet import Devnet

    try:
        devnet = Devnet(data_dir, port=port)
        was_running = devnet.status().pid is not None
        devnet.stop()
    except LedgerError as exc:
        raise fail(exc) from None
    console.print("stopped" if was_running else "not running")


@devnet_app.command()
def status(data_dir: DataDirOption = DEFAULT_DATA_DIR, port: PortOption = None) -> None:
    """Whether the devnet runs, its block height and the ledger contract's address."""
    from ledger.contract import LedgerContract
    from ledger.devnet import Devnet, remembered_contract

    try:
        devnet = Devnet(data_dir, port=port)
        current = devnet.status()
        address = None
        if current.running:
            contract = remembered_contract(devnet.data_dir, LedgerContract.connect(devnet.url))
            address = contract.address if contract else None
    except LedgerError as exc:
        raise fail(exc) from None
    _show(current, address)
