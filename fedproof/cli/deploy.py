"""``fedproof deploy`` (server side) and ``fedproof edge pull|predict`` (on the device).

The edge commands import no torch (``fl_client.edge`` runs onnxruntime alone); ``deploy`` imports it inside
the command only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedproof.cli.output import console, fail
from fedproof.cli.audit import ContractOpt, DevnetDir, LedgerUrl, open_contract
from fedproof.base.errors import FedproofError
from ledger.errors import LedgerError

edge_app = typer.Typer(help="On an edge device: pull a verified model, predict with onnxruntime.", no_args_is_help=True)
DEFAULT_REGISTRY = Path("registry")
DEFAULT_INSTALL = Path("~/.local/share/fedproof/edge")


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
    operator: Annotated[Optional[Path], typer.Option(
        help="The server kit's operator directory (<kit>/operator, from fedproof provision): its ledger keystore "
             "records, its deployment key signs (default: the local devnet's simulation operator, an unencrypted "
             "key for the playground).")] = None,
    password_file: Annotated[Optional[Path], typer.Option(help="The operator password's file (default: prompt).")] = None,
    rollback_to: Annotated[Optional[str], typer.Option(
        help="Instead of deploying: sign a rollback statement that lets devices go back to this deployed artifact.")] = None,
    ledger_url: LedgerUrl = None, contract: ContractOpt = None, devnet_dir: DevnetDir = None,
    app: Annotated[Optional[Path], typer.Option(help="The app of a task that does not ship with fedproof (fedproof "
                                                     "new): its task and its canonical graphs.")] = None,
) -> None:
    """Export a recorded global model to ONNX, quantize it to static int8, check it, publish, record and sign it."""
    if rollback_to:
        from fl_server.deploy import rollback

        try:
            chain, key = operator_ledger(operator, password_file, ledger_url, contract, devnet_dir)
            signed = rollback(registry, key, chain, bytes.fromhex(rollback_to))
        except (FedproofError, LedgerError, OSError, ValueError) as exc:
            raise fail(exc)
        console.print(f"signed rollback statement to {rollback_to[:16]}… (sequence {signed.manifest.sequence})")
        return
    deployment = deploy_run(_run_path(run, runs), server_round, registry, max_drop, data_dir, not no_ledger,
                            ledger_url, contract, devnet_dir, operator, password_file, app)
    print_deployment(deployment)


def deployment_key(operator: Path | None, password_file: Path | None, devnet_dir: Path | None):
    """The operator's deployment key; without ``operator``, the local devnet's simulation operator (created once,
    unencrypted: the playground's key, like anvil's dev accounts, and said so)."""
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.manifest import DeploymentKey
    from ledger.operator import OperatorKeys, read_password

    if operator is not None:
        return OperatorKeys(operator).deployment_key(read_password(password_file))
    path = Path(devnet_dir or DEFAULT_DATA_DIR).expanduser() / "simulation-operator" / "deploy-key.pem"
    if not path.is_file():
        from fedproof.base.files import write_atomically

        write_atomically(path, DeploymentKey.generate().to_pem(), private=True)
        console.print(f"[yellow]note:[/] signing with the local devnet's simulation operator key {path} "
                      "(unencrypted, for the playground; a deployment uses `--operator`)")
    return DeploymentKey.load(path)


def operator_ledger(operator: Path | None, password_file: Path | None, ledger_url: str | None, contract: str | None,
                    devnet_dir: Path | None, run_config: dict | None = None):
    """The contract to write to, and the deployment key that signs, for ``deploy`` and ``release``.

    With ``--operator`` (a server kit's ``operator/`` directory) both keys are the operator's: its keystore account
    writes (the account that deployed the contract in ``server start``), its deployment key signs. The ledger is
    the options', else the run's (``run.json``), else the kit's own pin (``<kit>/trust.json``, beside
    ``operator/``), and it must be the pinned chain. Without ``--operator``: a local simulation's devnet, written by
    its dev account, signed by its simulation operator key."""
    from ledger.contract import LedgerContract
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.operator import OperatorKeys, read_password, use_account
    from ledger.trust import LedgerTrust

    saved = run_config or {}
    if operator is None:
        chain = open_contract(ledger_url, contract, devnet_dir, saved)
        saved_dir = Path(str(saved["devnet-dir"])) if saved.get("devnet-dir") else None
        return chain, deployment_key(None, None, Path(devnet_dir or saved_dir or DEFAULT_DATA_DIR).expanduser())
    keys = OperatorKeys(Path(operator))
    if not keys.exists():
        raise FedproofError(f"no operator keys in {operator}: --operator is a server kit's operator/ directory "
                            "(fedproof provision makes it)")
    password = read_password(password_file)
    account, key = keys.ledger_account(password), keys.deployment_key(password)
    pin_path = Path(operator).parent / "trust.json"
    pin = LedgerTrust.load(pin_path) if pin_path.is_file() else None
    url = ledger_url or str(saved.get("ledger-url") or "") or (pin.rpc_urls[0] if pin and pin.rpc_urls else "")
    address = contract or str(saved.get("ledger-contract") or "") or (pin.contract_address if pin else "")
    if not url or not address:
        raise FedproofError(f"no ledger known for {operator}: there is no {pin_path} (written by `fedproof server "
                            "start`); pass --ledger-url and --contract")
    w3 = LedgerContract.connect(url)
    use_account(w3, account)
    chain = LedgerContract.at(w3, address, sender=account.address)
    if pin is not None and chain.domain != (pin.chain_id, pin.genesis, pin.contract):
        raise FedproofError(f"wrong ledger: {url} serves chain {chain.chain_id} (genesis {chain.genesis.hex()[:12]}…) "
                            f"contract {chain.address}, not the one pinned in {pin_path}; give the pinned one's "
                            "--ledger-url and --contract")
    if pin is not None and pin.deployment_key != key.public_key:
        raise FedproofError(f"the deployment key in {operator} is not the one {pin_path} pins")
    chain.require_writer(f"; the operator keystore in {operator} is not the account that deployed this contract: "
                         "is it the right kit's operator directory?")
    return chain, key


def write_device_trust(chain, key, path: Path) -> None:
    """A device's pin for this chain, contract and deployment key (what `edge pull --trust` reads)."""
    from fedproof.base.files import write_atomically
    from ledger.trust import LedgerTrust

    trust = LedgerTrust(*chain.domain, key.public_key, (chain._url,))
    write_atomically(path, trust.to_json().encode())


def deploy_run(run_path: Path, server_round: int | None, registry: Path, max_drop: float, data_dir: Path | None,
               ledger: bool, ledger_url: str | None = None, contract: str | None = None,
               devnet_dir: Path | None = None, operator: Path | None = None, password_file: Path | None = None,
               app: Path | None = None):
    from fedproof.core.rundir import RunDirectory
    from fedproof.core.task import load_task
    from fl_server.deploy import DeploySettings, deploy
    from ledger.defaults import DEFAULT_DATA_DIR

    try:
        if app is not None:
            from fedproof.launch.simulation import use_app

            use_app(app)
        config = RunDirectory(run_path).config().to_mapping()
        chain, key = None, None
        if ledger:
            chain, key = operator_ledger(operator, password_file, ledger_url, contract, devnet_dir, config)
            if operator is None:  # the playground's device pin, beside its devnet
                saved_dir = Path(str(config["devnet-dir"])) if config.get("devnet-dir") else None
                write_device_trust(chain, key, Path(devnet_dir or saved_dir or DEFAULT_DATA_DIR).expanduser()
                                   / "trust.json")
        dataset = load_task(str(config.get("task") or "fashion-mnist")).dataset(data_dir or config.get("data-dir") or None)
        return deploy(run_path, dataset, registry, chain, server_round, DeploySettings(max_drop_pp=max_drop), key, app)
    except (FedproofError, LedgerError, OSError, KeyError, ValueError) as exc:
        raise fail(exc)


def print_deployment(d) -> None:
    console.print(
        f"deployed [cyan]{d.artifact}[/]: int8 {d.int8_bytes:,} bytes ({d.int8_bytes / d.fp32_bytes:.2f}x fp32 ONNX), "
        f"accuracy {d.int8_accuracy:.4f} int8 vs {d.fp32_accuracy:.4f} fp32 "
        f"({100 * (d.int8_accuracy - d.fp32_accuracy):+.2f} pp); source model {d.source_model_sha256[:16]}… "
        f"(run {d.run_id}, round {d.round})" + (f"; recorded in tx {d.tx_hash}" if d.tx_hash else "")
    )



AppGraphs = Annotated[Optional[Path], typer.Option(
    "--app", help="The app whose task the model is of (fedproof new): this device's installed copy, whose graphs/ "
                  "it re-derives the artifact with. Not needed for fedproof's built-in tasks.")]


def app_graph_dirs(app: Path | None) -> tuple[Path, ...]:
    return (app.expanduser() / "graphs",) if app is not None else ()


@edge_app.command("pull")
def edge_pull(
    ref: Annotated[str, typer.Argument(help="Artifact SHA-256 (hex) or 'latest'.")],
    registry: Annotated[Path, typer.Option(help="Model registry directory.")] = DEFAULT_REGISTRY,
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its model.")] = DEFAULT_INSTALL,
    trust: Annotated[Optional[Path], typer.Option(
        help="The device's pin (a kit's trust.json: chain, genesis, contract, operator key, RPC endpoints); "
             "default: the local devnet's.")] = None,
    rpc: Annotated[Optional[list[str]], typer.Option(
        help="RPC endpoint to ask (repeatable; with two or more, all must agree). Default: the pin's.")] = None,
    app: AppGraphs = None,
) -> None:
    """Install a model only under a manifest the pinned operator key signed, recorded on the pinned chain (every
    endpoint agreeing), with a co-signed lineage, and never an older release than the one installed."""
    from fl_client.edge import connect, pull
    from ledger.defaults import DEFAULT_DATA_DIR
    from ledger.trust import LedgerTrust

    try:
        pin = LedgerTrust.load(trust or Path(DEFAULT_DATA_DIR).expanduser() / "trust.json")
        installed = pull(ref, registry, install_dir.expanduser(), pin, connect(pin, rpc or ()), None,
                         app_graph_dirs(app))
    except (FedproofError, LedgerError) as exc:
        raise fail(exc)
    console.print(f"installed {installed.artifact_sha256[:16]}… ({installed.version}, release {installed.sequence}, "
                  f"recorded in block {installed.block_number}) at {installed.path}")


@edge_app.command("predict")
def edge_predict(
    images: Annotated[Path, typer.Argument(help="What to predict, in the model's task's terms: table rows (.csv or "
                                                  ".parquet with the task's columns), or images (IDX, .gz or not, or "
                                                  ".npy, uint8 (n, 28, 28)).")],
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its model.")] = DEFAULT_INSTALL,
    limit: Annotated[int, typer.Option(help="Print at most this many predictions.")] = 20,
    benchmark: Annotated[bool, typer.Option("--benchmark", help="Also print latency per batch of 1 and 256.")] = False,
    monitor: Annotated[bool, typer.Option("--monitor", help="Test these images for drift against the model's signed "
                                                             "profile; log the result to <install-dir>/drift.jsonl.")] = False,
    alpha: Annotated[float, typer.Option(help="Drift tests' significance level (per window).")] = 0.01,
) -> None:
    """Predict with the installed model (onnxruntime only)."""
    from fedproof.core.inference import predict
    from fl_client.edge import installed_record, load, monitor as drift_monitor, read_inputs

    try:
        sess, installed = load(install_dir.expanduser())
        record = installed_record(install_dir.expanduser())
        x = read_inputs(images, record)
    except FedproofError as exc:
        raise fail(exc)
    labels = predict(sess, x)
    named = [record.classes[i] if i < len(record.classes) else str(i) for i in labels[:limit]]
    console.print(f"{len(labels)} predictions with model {installed.artifact_sha256[:16]}…: "
                  + " ".join(named) + (" …" if len(labels) > limit else ""))
    if monitor:
        try:
            drift = drift_monitor(install_dir.expanduser(), x, labels, alpha)
        except FedproofError as exc:
            raise fail(exc)
        verdict = ("[red]drift[/]" if drift.drift else "[green]no drift[/]")
        console.print(f"{verdict} over {drift.window} inputs (alpha {alpha:g}): KS p {drift.ks_p:.3g} "
                      f"(Bonferroni over features), MMD p {drift.mmd_p:.3g}, predicted classes p {drift.labels_p:.3g}")
    if benchmark:
        for batch in (1, 256):
            chunk = x[:batch] if len(x) >= batch else x.repeat(-(-batch // len(x)), axis=0)[:batch]
            times = []
            for _ in range(20):
                started = time.perf_counter()
                predict(sess, chunk, batch)
                times.append(time.perf_counter() - started)
            console.print(f"batch {batch}: {1000 * min(times):.2f} ms (best of 20)")


@edge_app.command("monitor")
def edge_monitor(
    install_dir: Annotated[Path, typer.Option(help="Where the device keeps its model and drift.jsonl.")] = DEFAULT_INSTALL,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port for this device's drift metrics.")] = 9401,
    address: Annotated[str, typer.Option(help="Address to serve on (default: loopback only).")] = "127.0.0.1",
) -> None:
    """Serve this device's drift (windows tested, alarms, the last p-values) to Prometheus, until stopped."""
    from fl_client.drift_metrics import serve

    serve(install_dir.expanduser(), metrics_port, address)
    console.print(f"drift metrics of {install_dir} on http://{address}:{metrics_port}/metrics (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
