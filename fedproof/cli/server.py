"""``fedproof provision``, ``fedproof server start|run|status|stop`` and ``fedproof client``: fedproof across machines.

The server and the clients are Flower's deployment engine (SuperLink, SuperNodes) started from the kits that
``provision`` writes; ``server run`` launches the federation on the SuperLink with ``flwr run``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fedproof.cli.output import console, fail
from fedproof.base.errors import FedproofError
from fedproof.base.files import write_atomically
from fedproof.base.processes import free_port
from ledger.errors import LedgerError

server_app = typer.Typer(help="The long-running server: Flower SuperLink with TLS and node authentication.",
                         no_args_is_help=True)
Kit = Annotated[Path, typer.Option(help="The server's startup kit (from fedproof provision).")]


def provision_command(
    server_host: Annotated[str, typer.Option(help="Host name or IP address clients dial (put in the TLS cert).")],
    identity: Annotated[Optional[list[Path]], typer.Option(
        help="A device's public identity.json (fedproof client init), repeatable: one kit per identity.")] = None,
    clients: Annotated[int, typer.Option(
        help="Without --identity: make N client kits with keys generated HERE (one-machine trials only: the "
             "operator then holds every client's key).")] = 0,
    password_file: Annotated[Optional[Path], typer.Option(
        help="File whose first line encrypts the operator's ledger and deployment keys (default: prompt).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the kits.")] = Path("kits"),
    port: Annotated[int, typer.Option(help="SuperLink port.")] = 9092,
    force: Annotated[bool, typer.Option(help="Replace existing kits (and all their keys).")] = False,
    max_epsilon: Annotated[float, typer.Option(help="Clients' policy: lifetime epsilon cap of each dataset.")] = 3.0,
    max_delta: Annotated[float, typer.Option(help="Clients' policy: largest delta accepted.")] = 1e-5,
    min_noise: Annotated[float, typer.Option(help="Clients' policy: smallest DP noise multiplier.")] = 0.0,
    max_clip: Annotated[float, typer.Option(help="Clients' policy: largest per-sample clipping norm.")] = 1.0,
    max_participation: Annotated[float, typer.Option(
        help="Clients' policy, user-level DP: the largest probability a device takes part in a round.")] = 1.0,
    assumed_colluders: Annotated[int, typer.Option(
        help="Clients' policy, user-level DP: contributors of a sum that may collude with the server (their noise "
             "shares do not count).")] = 0,
    declared_examples: Annotated[int, typer.Option(
        help="Each client's registered aggregation weight (its declared dataset size); 0: none registered.")] = 0,
    app: Annotated[Optional[Path], typer.Option(
        help="The app project the operator will run (fedproof new): its FAB is the only app devices run.")] = None,
) -> None:
    """Write one startup kit per party: kits/server and kits/client-<i>, each with only what that party may hold.

    Every client kit gets a privacy policy (policy.json: DP and HE required, the caps given here, no metrics
    released); edit a kit's file to give one data holder another policy. Runs may only ask for more privacy."""
    from fedproof.launch.provision import Identity, app_hashes, provision
    from ledger.operator import OperatorKeys, read_password
    from privacy.policy import PolicyError, PrivacyPolicy

    try:
        identities = [Identity.load(p) for p in identity or []]
        if not identities and clients < 1:
            raise FedproofError("give each device's --identity (from `fedproof client init`), or --clients N for a "
                                "one-machine trial")
        if not identities:
            console.print("[yellow]warning:[/] no --identity given: the client keys are generated here, so this "
                          "operator could sign as any client. For real devices run `fedproof client init` on each.")
        policy = PrivacyPolicy(max_epsilon=max_epsilon, max_delta=max_delta, min_noise_multiplier=min_noise,
                               max_clip=max_clip, max_participation=max_participation,
                               assumed_colluders=assumed_colluders)
        kits = provision(out, clients, server_host, port, force, policy=policy, declared_examples=declared_examples,
                         identities=identities or None, apps=app_hashes(app) if app is not None else None)
        OperatorKeys.create(kits.server / "operator", read_password(password_file))
    except PolicyError as exc:
        raise fail(exc)
    except (FedproofError, OSError) as exc:
        raise fail(exc)
    console.print(f"server kit: {kits.server}\nclient kits: {', '.join(str(p) for p in kits.clients.values())}\n"
                  "copy each client kit to its device; keep the server kit on the server")


@server_app.command("start")
def server_start(
    kit: Kit = Path("kits/server"),
    bind: Annotated[str, typer.Option(
        help="Public address of the Fleet API, the only API clients reach (0.0.0.0: every interface).")] = "0.0.0.0",
    control_api_address: Annotated[str, typer.Option(
        "--control-api-address",
        help="HOST:PORT where the SuperLink itself (Control and Runtime APIs) listens: loopback by default "
             "(127.0.0.1:<kit port + 1>); any other address must be reachable by the operator only.")] = "",
    ledger_url: Annotated[Optional[str], typer.Option(help="Ledger node (default: start a devnet in the kit).")] = None,
    devnet_port: Annotated[Optional[int], typer.Option(
        help="Port of the devnet the server starts (default: its directory's own, a free port chosen once).")] = None,
    no_ledger: Annotated[bool, typer.Option("--no-ledger", help="Run without a ledger.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no node authentication (testing only).")] = False,
    password_file: Annotated[Optional[Path], typer.Option(
        help="File holding the operator key password (kept for the runs; default: prompt, then kept 0600 in "
             "the kit's state).")] = None,
) -> None:
    """Start the SuperLink (TLS + SuperNode authentication) and the devnet; print the address clients use."""
    from fedproof.launch.nodes import ServerKit, SuperLink

    if insecure:
        console.print("[yellow]warning: --insecure: no TLS and no node authentication; anyone can join and read "
                      "traffic. Use only on a trusted test network.[/]")
    devnet = None
    try:
        server = ServerKit.load(kit)
        ledger = {"ledger": not no_ledger, "ledger-url": ledger_url or "", "devnet-dir": ""}
        account = None if no_ledger else operator_account(server, password_file)  # a wrong password starts nothing
        if not no_ledger and not ledger_url:
            from ledger.devnet import Devnet

            devnet = Devnet(server.state / "devnet", port=devnet_port)
            was_running = devnet.status().running
            ledger.update({"ledger-url": devnet.start().url, "devnet-dir": str(devnet.data_dir)})
            devnet = None if was_running else devnet  # stopped again below only if this start began it
        if account is not None:
            ledger.update(open_operator_ledger(server, ledger["ledger-url"], ledger["devnet-dir"], account))
        SuperLink(server, bind, insecure, control_api_address).start()
        write_atomically(server.state / "ledger.json", json.dumps(ledger, indent=2).encode())
    except (FedproofError, LedgerError, OSError) as exc:
        if devnet is not None:
            devnet.stop()
        raise fail(exc)
    link = SuperLink(server, control=control_api_address)
    console.print(f"SuperLink running (pid {link.running_pid()}) on {':'.join(map(str, link.control))} (Control and "
                  f"Runtime APIs: operator only); clients reach the Fleet API at [bold]{server.address}[/] with: "
                  f"fedproof client --kit <client kit> --server {server.address}\n"
                  f"ledger: {ledger['ledger-url'] or 'off'}; log: {server.state / 'superlink.log'}")


def operator_account(server, password_file: Path | None):
    """The operator's ledger account, decrypted with the password from ``password_file``, else the one kept in the
    kit's state, else a prompt. The password is kept (0600, for the runs) only once it has opened the keystore: a
    wrong one is refused before anything starts, and is never saved."""
    from ledger.operator import OperatorKeys, read_password

    keys = OperatorKeys(server.path / "operator")
    if not keys.exists():
        raise FedproofError(f"no operator keys in {keys.directory}: re-provision the kits (fedproof provision)")
    password_path = server.state / "operator-password"
    kept = password_file is None and password_path.is_file()
    password = read_password(password_path if kept else password_file)
    try:
        account = keys.ledger_account(password)
    except LedgerError as exc:
        where = f"the password kept in {password_path}" if kept else \
            (f"--password-file {password_file}" if password_file else "the password typed")
        raise FedproofError(f"{where} does not open the operator keystore {keys.ledger_key}: give the right one "
                            "with --password-file") from exc
    if not kept:
        write_atomically(password_path, password + b"\n", private=True)
    return account


def open_operator_ledger(server, url: str, devnet_dir: str, account) -> dict[str, str]:
    """Deploy (or find) the lineage contract with the operator's own keystore account, and write the kit's
    ``trust.json`` (chain, genesis, contract, deployment key, RPC): what every client kit and device pins."""
    from ledger.devnet import ensure_contract
    from ledger.contract import LedgerContract
    from ledger.operator import OperatorKeys, use_account
    from ledger.trust import LedgerTrust

    keys = OperatorKeys(server.path / "operator")
    password_path = server.state / "operator-password"
    w3 = LedgerContract.connect(url)
    if devnet_dir and w3.eth.get_balance(account.address) == 0:  # the kit's own devnet: fund the operator once
        w3.provider.make_request("anvil_setBalance", [account.address, hex(10**21)])
    use_account(w3, account)
    contract = ensure_contract(w3, Path(devnet_dir) if devnet_dir else server.state / "ledger", sender=account.address)
    trust = LedgerTrust(*contract.domain, keys.deploy_public, (url,))
    write_atomically(server.path / "trust.json", trust.to_json().encode())
    return {"ledger-contract": contract.address, "ledger-operator": str(keys.directory),
            "ledger-password-file": str(password_path)}


@server_app.command("run")
def server_run(
    kit: Kit = Path("kits/server"),
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    run_dir: Annotated[Path, typer.Option(help="Where the server writes run directories.")] = Path("runs"),
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: off).")] = 9400,
    config: Annotated[Optional[list[str]], typer.Option("-c", help="More run settings, key=value (TOML values, as flwr run -c).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this run id from its last recorded round.")] = None,
    app: Annotated[Optional[Path], typer.Option(help="The app project to run (fedproof new; the one the kits "
                                                     "pin). Default: fedproof's own.")] = None,
) -> None:
    """Run a federation on the started SuperLink (``flwr run`` of this app) and watch it: a line per round as it is
    recorded, the summary when it ends. Exits 1 when the run stops early, fails or has nothing to do."""
    from fedproof.core.config import parse_overrides
    from fedproof.core.rundir import RunDirectory, new_run_id
    from fedproof.launch.nodes import ServerKit, start_on_superlink

    try:
        server = ServerKit.load(kit)
        ledger = json.loads((server.state / "ledger.json").read_text())
        run_id = resume or new_run_id()
        overrides: dict[str, object] = {"clients": server.clients, "rounds": rounds, "key-set": str(server.path),
                                        "run-dir": str(run_dir.resolve()), "metrics-port": metrics_port, **ledger,
                                        "run-id": run_id}
        if resume:  # the run's saved settings, then resume from its last recorded round
            saved = RunDirectory(run_dir / resume).config().to_mapping()
            overrides = {**saved, **{k: v for k, v in overrides.items() if k != "rounds"}, "resume": True}
        overrides.update(parse_overrides(config))
        run_id = str(overrides["run-id"])
        log = server.state / "logs" / f"{run_id}.log"
        path = Path(str(overrides["run-dir"])) / run_id
        console.print(f"run [cyan]{run_id}[/] on {server.address}, {overrides['rounds']} rounds: run directory {path}, "
                      f"Flower's log {log}")
        started = time.monotonic()
        process = start_on_superlink(server, overrides, log, app)
    except (FedproofError, OSError, ValueError) as exc:
        raise fail(exc)
    code = _watch(process, RunDirectory(path), int(str(overrides["rounds"])))
    _report(RunDirectory(path), log, code, time.monotonic() - started, overrides)


def _watch(process, run, rounds: int) -> int:
    """Print each round's row as the server appends it, until ``flwr run`` ends; its exit code."""
    shown = 0
    try:
        while True:
            code = process.poll()
            rows = run.metrics() if (run.path / "metrics.jsonl").is_file() else []
            for row in rows[shown:]:
                eps = f", epsilon max {row.epsilon_max:.3f}" if row.epsilon_max is not None else ""
                failed = f" [yellow](model unchanged: {row.failed})[/]" if row.failed else ""
                console.print(f"round {row.round}/{rounds}: accuracy {row.accuracy:.4f}, {row.train_clients} "
                              f"clients{eps}, {row.seconds:.1f} s{failed}")
            shown = max(shown, len(rows))
            if code is not None:
                return code
            time.sleep(0.5)
    except KeyboardInterrupt:
        process.terminate()
        console.print("stopped watching; the run itself goes on on the SuperLink (`flwr stop` ends it)")
        raise typer.Exit(code=130) from None


def _report(run, log: Path, code: int, wall: float, overrides: dict) -> None:
    """The same summary as ``simulate``; exit 1, with the reason, when the run did not do what was asked."""
    from fedproof.cli.output import privacy_table, rounds_table

    summary = run.read().get("summary") if (run.path / "run.json").is_file() else None
    if code != 0 or summary is None:
        tail = log.read_text(errors="replace").splitlines()[-25:] if log.is_file() else []
        console.print("\n".join(tail))
        console.print(f"[red]error:[/] the run failed before it finished (flwr run exited {code}); its log: {log}")
        raise typer.Exit(code=1)
    rows = run.metrics()
    if rows:
        rounds_table(rows, run.path, wall)
    if summary.get("epsilon_by_client"):
        privacy_table(summary["epsilon_by_client"], float(str(overrides.get("target-epsilon", 0)) or 0))
    if summary.get("stopped"):
        console.print(f"[red]run stopped early:[/] {summary['stopped']}")
        raise typer.Exit(code=1)
    if not rows:
        console.print("[red]error:[/] the run trained no round")
        raise typer.Exit(code=1)


@server_app.command("status")
def server_status(kit: Kit = Path("kits/server")) -> None:
    """Whether the SuperLink runs, and the SuperNodes it knows."""
    import subprocess

    from fedproof.launch.nodes import CONNECTION, FLOWER_ENV, ServerKit, SuperLink, _bin

    server = ServerKit.load(kit)
    pid = SuperLink(server).running_pid()
    console.print(f"SuperLink: {'running, pid ' + str(pid) if pid else 'not running'} ({server.address})")
    if pid:
        out = subprocess.run([_bin("flwr"), "supernode", "ls", CONNECTION], capture_output=True, text=True,
                             env={**os.environ, **FLOWER_ENV, **server.env()}, timeout=60)
        console.print(out.stdout or out.stderr)


@server_app.command("stop")
def server_stop(kit: Kit = Path("kits/server")) -> None:
    """Stop the SuperLink and the devnet this kit started."""
    from fedproof.launch.nodes import ServerKit, SuperLink

    server = ServerKit.load(kit)
    SuperLink(server).stop()
    if (server.state / "devnet").is_dir():
        from ledger.devnet import Devnet

        Devnet(server.state / "devnet").stop()  # by its pidfile
    console.print("stopped")


client_app = typer.Typer(help="This device: make its own keys (init), then run its SuperNode (--kit).",
                         invoke_without_command=True)


@client_app.command("init")
def client_init_command(
    client_id: Annotated[str, typer.Option(help="This device's client id (agreed with the operator).")],
    out: Annotated[Path, typer.Option(help="Where this device keeps its keys.")] = Path("identity"),
    force: Annotated[bool, typer.Option(help="Replace existing keys (the operator must register the new ones).")] = False,
) -> None:
    """Make this device's signing key and node key here; send only identity.json to the operator."""
    from fedproof.launch.provision import IDENTITY, client_init

    try:
        identity = client_init(out, client_id, force)
    except (FedproofError, OSError) as exc:
        raise fail(exc)
    console.print(f"client {identity.client_id}: keys in {out} (keep them here); send {out / IDENTITY} to the "
                  f"operator (public: signing key {identity.signing_key.hex()[:16]}…, node key)")


def check_server_certificate(kit: Path, address: str, timeout: float = 5.0) -> None:
    """Refuse to start when the server answers with a certificate this kit's CA did not sign: a kit from another
    provisioning, or --server naming another server (Flower would only say CERTIFICATE_VERIFY_FAILED, exit 305). A
    server not answering yet is not an error: the SuperNode retries."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(Path(kit) / "ca.crt"))
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host.strip("[]")):
            return
    except ssl.SSLCertVerificationError as exc:
        raise FedproofError(f"the server at {address} presents a certificate this kit's CA ({kit / 'ca.crt'}) did not "
                            f"sign ({exc.verify_message}): the kit is from another provisioning, or --server names "
                            "another server") from exc
    except (OSError, ValueError):
        return


def pinned_app_task(kit: Path, app: Path) -> str:
    """The task of the device's installed app ``app``, after checking that its FAB is the one the kit pins (the
    device runs its own copy, so that copy must be the operator's pinned app, byte for byte)."""
    from fedproof.core.config import pyproject_overrides
    from fedproof.launch.provision import app_hashes

    pinned = json.loads((kit / "apps.json").read_text()).get("apps", [])
    digest = app_hashes(app)[0]
    if digest not in pinned:
        raise FedproofError(f"{app} builds FAB {digest[:16]}…, which this kit does not pin "
                            f"({', '.join(p[:16] + '…' for p in pinned)}): install the operator's app as provisioned")
    task = str(pyproject_overrides(app).get("task", ""))
    if not task:
        raise FedproofError(f"{app}/pyproject.toml names no task in [tool.flwr.app.config]")
    sys.path.insert(0, str(app.resolve()))  # this process checks --data with the task's own loader
    return task


@client_app.callback()
def client_command(
    ctx: typer.Context,
    kit: Annotated[Optional[Path], typer.Option(help="This client's startup kit.")] = None,
    identity: Annotated[Optional[Path], typer.Option(
        help="This device's keys (fedproof client init); default: the kit's own, if provision generated them.")] = None,
    server: Annotated[Optional[str], typer.Option(help="SuperLink address HOST:PORT (default: from the kit).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="This device's copy of the task's data set (the demo: a "
                                                           "Fashion-MNIST directory it trains its partition of).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="This device's own records: a .csv, .parquet or .npz file, or a "
                                                      "folder of class folders of images (checked before it starts).")] = None,
    task: Annotated[Optional[str], typer.Option(help="The task this device trains (built-in name or module:Class); "
                                                     "it refuses runs of any other.")] = None,
    app: Annotated[Optional[Path], typer.Option(help="This device's installed copy of the app it runs (fedproof new): "
                                                     "it must be the one its kit pins; its task is the device's.")] = None,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's runtime API (0: a free one, so several "
                                           "devices can share a machine).")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for training (default 0: torch's default, all).")] = 0,
    insecure: Annotated[bool, typer.Option("--insecure", help="No TLS, no node key (testing only).")] = False,
) -> None:
    """Run this device's SuperNode (in the foreground): it trains with its own data, keys and HE key share."""
    from fedproof.launch.nodes import FLOWER_ENV, ROOT, app_runner_command, supernode_command
    from fedproof.launch.provision import read_kit

    if ctx.invoked_subcommand is not None:
        return
    if kit is None:
        raise fail(FedproofError("give --kit (this client's startup kit), or run `fedproof client init` first"))

    if insecure:
        console.print("[yellow]warning: --insecure: no TLS and no node authentication (testing only).[/]")
    try:
        address = server or read_kit(kit, "client")["server"]
        if data_dir is not None:
            from fedproof.core.data import locate

            try:
                locate(data_dir)
            except FedproofError as exc:
                raise FedproofError(f"--data-dir {data_dir}: {exc}") from exc
        if app is not None:  # its own copy of the pinned app: its task module is what the executor imports
            task = task or pinned_app_task(kit, app)
        if data is not None:  # this device's own records, in its task's terms: refused now, not in round 1
            from fedproof.core.task import load_task

            records, labels = load_task(task or "fashion-mnist").device_records(data)
            console.print(f"{len(labels)} records of task {task or 'fashion-mnist'} in {data}")
        if not insecure:
            check_server_certificate(kit, address)
        if not (kit / "trust.json").is_file():
            console.print(f"[yellow]note:[/] no ledger pin at {kit / 'trust.json'}: this device signs nothing for a run "
                          "that records on a ledger (copy the server kit's trust.json there)")
        port = port or free_port()
        command = supernode_command(kit, address, port, str(data_dir.resolve()) if data_dir else "", insecure,
                                    threads, identity, data=data.resolve() if data else None, task=task or "")
        runner = app_runner_command(kit, port, os.getpid())
    except (FedproofError, OSError) as exc:
        raise fail(exc)
    os.environ.update(FLOWER_ENV)
    import subprocess

    # the executor watches this pid, which the SuperNode keeps after exec: when the SuperNode stops, so does it
    # both run fedproof's own modules (fl_client.app_runner, .supernode), and the device's copy of its app's task
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([str(app.resolve())] if app is not None else []))
    subprocess.Popen(runner, env=dict(os.environ))
    os.execvp(command[0], command)
