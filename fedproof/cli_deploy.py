"""``fedproof deploy`` (server side) and ``fedproof edge pull|predict`` (on the device).

The edge commands import no torch (``fl_client.edge`` runs onnxruntime alone); ``deploy`` imports it inside
the command only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fedproof.cli_audit import ContractOpt, DevnetDir, LedgerUrl, open_contract
from fedproof.errors import FedproofError
from ledger.errors import LedgerError

console = Console()
edge_app = typer.Typer(help="On an edge device: pull a verified model, predict with onnxruntime.", no_args_is_help=True)
DEFAULT_REGISTRY = Path("registry")
DEFAULT_INSTALL = Path("~/.local/share/fedproof/edge")


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/] {exc}")
    raise typer.Exit(code=2) from exc


def _run_path(run: str, runs: Path) -> Path:
    path = Path(run)
    return path if (path / "run.json").is_file() else runs / run


def deploy_command(
    run: Annotated[str, typer.Option(help="Run directory or run id (under --runs).")],
    server_round: Annotated[Optional[int], typer.Option("--round", help="Round whose model to deploy (default: final).")] = None,
    runs: Annotated[Path, typer.Option(help="Parent directory of run directories.")] = Path("runs"),
    registry: Annotated[Path, typer.Option(help="Model registry directory.")] = DEFAULT_REGISTRY,
    max_drop: Annotated[float, typer.Option(help="Largest int8 accuracy loss against fp32, in points.")] = 1.0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset directory (default: search).")] = None,
    no_ledger: Annotated[bool, typer.Option("--no-ledger", help="Publish without a ledger (not verifiable).")] = False,
    ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
) -> None:
    """Export a recorded global model to ONNX, quantize it to static int8, check it, publish and record it."""
    deployment = deploy_run(_run_path(run, runs), server_round, registry, max_drop, data_dir, not no_ledger,
                            ledger_url, contract, devnet_dir)
    print_deployment(deployment)


def deploy_run(run_path: Path, server_round: int | None, registry: Path, max_drop: float, data_dir: Path | None,
               ledger: bool, ledger_url: str | None = None, contract: str | None = None,
               devnet_dir: Path | None = None):
    from fedproof.data import load_dataset
    from fedproof.rundir import RunDirectory
    from fl_server.deploy import DeploySettings, deploy

    try:
        config = RunDirectory(run_path).config().to_mapping()
        chain = None
        if ledger:
            chain = open_contract(ledger_url, contract, devnet_dir, config)
        dataset = load_dataset(data_dir or config.get("data-dir") or None)
        return deploy(run_path, dataset, registry, chain, server_round, DeploySettings(max_drop_pp=max_drop))
    except (FedproofError, LedgerError, OSError, KeyError, ValueError) as exc:
        _fail(exc)


def print_deployment(d) -> None:
    console.print(
        f"deployed [cyan]{d.artifact}[/]: int8 {d.int8_bytes:,} bytes ({d.int8_bytes / d.fp32_bytes:.2f}x fp32 ONNX), "
        f"accuracy {d.int8_accuracy:.4f} int8 vs {d.fp32_accuracy:.4f} fp32 "
        f"({100 * (d.int8_accuracy - d.fp32_accuracy):+.2f} pp); source model {d.source_model_sha256[:16]}… "
        f"(run {d.run_id}, round {d.round})" + (f"; recorded in tx {d.tx_hash}" if d.tx_hash else "")
    )


@edge_app.command("pull")
def edge_pull(
    ref: Annotated[str, typer.Argument(help="Artifact SHA-256 (hex) or 'latest'.")],
    registry: Annotated[Path, typer.Option(help="Model registry directory.")] = DEFAULT_REGISTRY,
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its model.")] = DEFAULT_INSTALL,
    ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
) -> None:
    """Install a model only if its exact bytes are recorded as a deployment on the ledger."""
    from fl_client.edge import pull

    try:
        installed = pull(ref, registry, install_dir.expanduser(), open_contract(ledger_url, contract, devnet_dir))
    except (FedproofError, LedgerError) as exc:
        _fail(exc)
    console.print(f"installed {installed.artifact_sha256[:16]}… (model of round {installed.run_round}, recorded in "
                  f"block {installed.block_number}) at {installed.path}")


@edge_app.command("predict")
def edge_predict(
    images: Annotated[Path, typer.Argument(help="Images: IDX (.gz or not) or .npy, uint8 (n, 28, 28).")],
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its model.")] = DEFAULT_INSTALL,
    limit: Annotated[int, typer.Option(help="Print at most this many predictions.")] = 20,
    benchmark: Annotated[bool, typer.Option("--benchmark", help="Also print latency per batch of 1 and 256.")] = False,
) -> None:
    """Predict with the installed model (onnxruntime only)."""
    from fedproof.inference import predict
    from fl_client.edge import load, read_images

    try:
        sess, installed = load(install_dir.expanduser())
        x = read_images(images)
    except FedproofError as exc:
        _fail(exc)
    labels = predict(sess, x)
    console.print(f"{len(labels)} predictions with model {installed.artifact_sha256[:16]}…: "
                  + " ".join(map(str, labels[:limit])) + (" …" if len(labels) > limit else ""))
    if benchmark:
        for batch in (1, 256):
            chunk = x[:batch] if len(x) >= batch else x.repeat(-(-batch // len(x)), axis=0)[:batch]
            times = []
            for _ in range(20):
                started = time.perf_counter()
                predict(sess, chunk, batch)
                times.append(time.perf_counter() - started)
            console.print(f"batch {batch}: {1000 * min(times):.2f} ms (best of 20)")
