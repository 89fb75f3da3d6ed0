"""The ``fedproof`` command line: one entry point for simulation, and later devnet, audit, deploy, server...

Settings resolve once (CLI > pyproject ``[tool.flwr.app.config]`` > defaults) into a RunConfig that is
written to the run's ``run.json``. Errors fedproof raises on purpose print as one line, with exit code 2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedproof.cli.output import console
from fedproof.core.config import PARTITIONS, parse_overrides, resolve
from fedproof.base.errors import FedproofError
from ledger.errors import LedgerError
from privacy.errors import PrivacyError

if TYPE_CHECKING:
    from fedproof.core.rundir import RoundMetrics

USER_ERRORS = (FedproofError, PrivacyError, LedgerError)
"""Errors raised on purpose: printed as one line, exit code 2."""

app = typer.Typer(
    name="fedproof",
    help="Federated training with differential privacy, encrypted aggregation and an auditable ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """fedproof command line."""


@app.command()
def simulate(
    clients: Annotated[Optional[int], typer.Option(help="Number of simulated clients.")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="Federated rounds.")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Fraction of clients trained per round.")] = None,
    fraction_evaluate: Annotated[Optional[float], typer.Option(help="Fraction evaluating locally per round.")] = None,
    partition: Annotated[Optional[str], typer.Option(help=f"Data split: {', '.join(PARTITIONS)}.")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="Dirichlet concentration (smaller: more skew).")] = None,
    classes_per_client: Annotated[Optional[int], typer.Option(help="Classes per client (pathological).")] = None,
    task: Annotated[Optional[str], typer.Option(help="What to train: fashion-mnist, breast-cancer, or module:Class of "
                                                     "your own package (fedproof new).")] = None,
    model: Annotated[Optional[str], typer.Option(help="One of the task's models (default: its first).")] = None,
    app: Annotated[Optional[Path], typer.Option(help="An app project (fedproof new): its settings and its task.")] = None,
    local_epochs: Annotated[Optional[int], typer.Option(help="Local epochs per round.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Local mini-batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Local SGD learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for partitioning, initialisation, shuffling.")] = None,
    dp: Annotated[Optional[bool], typer.Option("--dp/--no-dp", help="DP-SGD on every client (default: on).")] = None,
    target_epsilon: Annotated[Optional[float], typer.Option(help="Each client's epsilon budget for the run.")] = None,
    delta: Annotated[Optional[float], typer.Option(help="DP delta (must be below 1/samples per client).")] = None,
    noise_multiplier: Annotated[
        Optional[float], typer.Option(help="Fixed DP noise (default 0: calibrate from the target epsilon).")
    ] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option(help="DP-SGD per-sample clipping bound.")] = None,
    he: Annotated[
        Optional[bool], typer.Option("--he/--no-he", help="Encrypted aggregation with CKKS (default: on).")
    ] = None,
    key_set: Annotated[
        Optional[Path], typer.Option(help="Key set directory: fedproof keys init (default: one kept beside the devnet).")
    ] = None,
    ledger: Annotated[
        Optional[bool], typer.Option("--ledger/--no-ledger", help="Record the lineage on chain (default: on).")
    ] = None,
    ledger_url: Annotated[
        Optional[str], typer.Option(help="Ethereum JSON-RPC URL (default: start the local anvil devnet).")
    ] = None,
    devnet_dir: Annotated[Optional[Path], typer.Option(help="Local devnet's data directory.")] = None,
    devnet_port: Annotated[
        Optional[int], typer.Option(help="Local devnet's port (default: the directory's own; 8545 for the default).")
    ] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset directory (default: search).")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Parent directory of run directories.")] = None,
    run_id: Annotated[Optional[str], typer.Option(help="Run directory name (default: timestamped).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs Ray may use (default: all); one per client.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster instead of starting one.")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
    deploy: Annotated[bool, typer.Option(help="Then quantize and deploy the final model (fedproof deploy).")] = False,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue this run id from its last recorded round (after a crash).")
    ] = None,
    settings: Annotated[
        Optional[list[str]], typer.Option("-c", help="Any run setting, key=value (TOML values, as flwr run -c).")
    ] = None,
) -> None:
    """Run a federation on this machine with Flower's simulation engine."""
    from fedproof.core.rundir import new_run_id
    from fedproof.launch.simulation import simulate as run

    try:
        config = resolve(
            dict(
                clients=clients,
                rounds=rounds,
                fraction_train=fraction,
                fraction_evaluate=fraction_evaluate,
                partition=partition,
                alpha=alpha,
                classes_per_client=classes_per_client,
                task=task,
                model=model,
                local_epochs=local_epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
                dp=dp,
                target_epsilon=target_epsilon,
                delta=delta,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                he=he,
                key_set=str(key_set) if key_set else None,
                ledger=ledger,
                ledger_url=ledger_url,
                devnet_dir=str(devnet_dir) if devnet_dir else None,
                devnet_port=devnet_port,
                data_dir=str(data_dir) if data_dir else None,
                run_dir=str(run_dir) if run_dir else None,
                run_id=run_id,
            ),
            app_dir=app,
            settings=parse_overrides(settings),
        )
        if resume:  # the run's own saved settings, not today's defaults
            from fedproof.core.rundir import RunDirectory

            saved = RunDirectory(Path(config.run_dir).expanduser() / resume)
            config = saved.config().with_overrides(resume=True, rounds=rounds)
        if not config.run_id:
            config = config.with_overrides(run_id=new_run_id())
        console.print(
            f"[bold]fedproof simulate[/]: {config.clients} clients, {config.rounds} rounds, "
            f"{config.partition} partitions"
            + (f" (alpha={config.alpha})" if config.partition == "dirichlet" else "")
            + ((f", user-level DP (each device takes part with q={config.participation:g}, update clip "
                f"{config.update_clip:g}, noise shared under HE) with epsilon <= {config.target_epsilon:g}"
                if config.privacy == "user" else f", DP-SGD with epsilon <= {config.target_epsilon:g}")
               + f", delta {config.delta:g}" if config.dp else ", no DP")
            + (", threshold CKKS aggregation (" + (f"{config.he_threshold} key holders" if config.he_threshold else
                                                  "a majority of key holders") + " decrypt)" if config.he
               else ", plaintext aggregation")
            + f", run [cyan]{config.run_id}[/]"
        )
        started = time.monotonic()
        with _RoundProgress(config.rounds) as progress:
            result = run(config, observer=progress.update, num_cpus=num_cpus, ray_address=ray_address, verbose=verbose,
                         app_dir=app)
        wall = time.monotonic() - started
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    rounds_table(result.rounds, result.run_dir, wall)
    if result.epsilon_by_client:
        privacy_table(result.epsilon_by_client, config.target_epsilon)
    if result.stopped:
        console.print(f"[yellow]run ended early:[/] {result.stopped}")
    if result.ledger is not None and result.ledger.contract:
        _ledger_summary(result, lineage=not deploy)  # with --deploy, the artifact's lineage is shown instead
    if deploy:
        _deploy_and_show(result, app)
    _closing_lines(result)


def _closing_lines(result) -> None:
    """What a newcomer needs at the end: how good, how private, where to look next."""
    final = result.rounds[-1].accuracy if result.rounds else float("nan")
    console.print(f"[bold]accuracy[/]  {final:.4f} on the central test set after {len(result.rounds)} rounds")
    if result.epsilon_by_client:
        console.print(f"[bold]privacy[/]   epsilon <= {max(result.epsilon_by_client.values()):.3f} per client "
                      f"(delta {result.config.delta:g}), as each client signed it")
    else:
        console.print("[bold]privacy[/]   no differential privacy in this run")
    look = f"fedproof audit verify {result.run_dir / 'model.safetensors'}" if result.config.ledger else \
        f"{result.run_dir / 'metrics.jsonl'}"
    console.print(f"[bold]next[/]      {look}  (README: After deployment, Auditing)")


def _deploy_and_show(result, app: Path | None = None) -> None:
    """Deploy the final model, then show the lineage of the deployed artifact as the ledger tells it."""
    done = result.config
    deployment = deploy_run(result.run_dir, None, Path("registry"), 1.0, Path(done.data_dir) if done.data_dir else None,
                            done.ledger, app=app)
    print_deployment(deployment)
    if done.ledger:
        contract = open_contract(run_config=result.settings())
        print_lineage(contract, bytes.fromhex(deployment.artifact_sha256), [result.run_dir / "ledger"], last=5)
        release_and_show(contract, Path("registry"), deployment.artifact_sha256, result.settings())


def _ledger_summary(result, lineage: bool = True) -> None:
    """Where the lineage is, and the lineage of the final model as the ledger tells it."""
    ledger = result.ledger
    console.print(f"ledger: contract {ledger.contract} on chain {ledger.chain_id}, "
                  f"{ledger.rounds_recorded} rounds recorded, final model {ledger.model_hash}")
    if not result.config.ledger_operator:
        console.print("[dim]records written with the devnet's dev account 0 (anvil's public key: the local "
                      "playground); each model is vouched for by the clients' co-signatures, checked by audit "
                      "verify. A deployment writes with the operator's own keystore.[/]")
    if ledger.pending:
        console.print(f"[yellow]{ledger.pending} round record(s) could not reach the ledger yet:[/] "
                      f"fedproof ledger flush {result.run_dir}")
        return
    if not lineage:
        return
    try:
        contract = open_contract(run_config=result.settings())
        print_lineage(contract, bytes.fromhex(ledger.model_hash), [result.run_dir / "ledger"], last=5)
    except USER_ERRORS as exc:
        console.print(f"[yellow]could not read the lineage back:[/] {exc}")


from fedproof.cli.output import privacy_table, rounds_table  # noqa: E402
from fedproof.cli.audit import audit_app, ledger_app, open_contract, print_lineage  # noqa: E402
from fedproof.cli.deploy import deploy_command, deploy_run, edge_app, print_deployment  # noqa: E402
from fedproof.cli.server import client_app, provision_command, server_app  # noqa: E402
from fedproof.cli.devnet import devnet_app  # noqa: E402
from fedproof.cli.new import graphs_command, new_command  # noqa: E402
from fedproof.cli.release import release_and_show, release_app  # noqa: E402  (adds edge follow, audit releases)

app.command("new")(new_command)
app.command("graphs")(graphs_command)
app.command("provision")(provision_command)
app.add_typer(server_app, name="server")
app.add_typer(client_app, name="client")

app.command("deploy")(deploy_command)
app.add_typer(release_app, name="release")
app.add_typer(edge_app, name="edge")

app.add_typer(audit_app, name="audit")
app.add_typer(ledger_app, name="ledger")
app.add_typer(devnet_app, name="devnet")

keys_app = typer.Typer(help="Key sets: client signing keys and the allow-list.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option(help="Directory for the key set (created; files 0600).")],
    clients: Annotated[int, typer.Option(help="Clients with ids 0..N-1 (as simulation numbers them).")] = 10,
    client_ids: Annotated[Optional[str], typer.Option(help="Comma-separated client ids instead.")] = None,
) -> None:
    """Create a key set: clients/<id>.pem go to the clients, allowlist.json to the server and every client (threshold
    HE needs no key file: the clients generate the run's key together at the start of each run)."""
    from fedproof.core.keys import init_key_set

    ids = [c.strip() for c in client_ids.split(",") if c.strip()] if client_ids else [str(i) for i in range(clients)]
    try:
        keys = init_key_set(out, ids)
    except (*USER_ERRORS, OSError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(f"key set for {len(ids)} clients in [cyan]{keys.directory}[/]: each client gets its "
                  "clients/<id>.pem and allowlist.json; the server gets allowlist.json")


class _RoundProgress:
    """A rich progress bar over rounds that shows the latest accuracy and loss."""

    def __init__(self, rounds: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = self.progress.add_task("rounds", total=rounds, status="waiting for the first round...")

    def __enter__(self) -> _RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, row: RoundMetrics) -> None:
        status = f"accuracy {row.accuracy:.4f}  loss {row.loss:.4f}  ({row.seconds:.1f} s)"
        self.progress.update(self.task, completed=row.round, status=status)


if __name__ == "__main__":
    app()
