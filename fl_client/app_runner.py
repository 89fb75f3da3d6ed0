"""The device's ClientApp executor: runs only the operator's pinned app, and only the copy installed on the device.

A stock SuperNode in its default ``subprocess`` isolation installs whatever FAB a run ships and executes its code
with the device's node config (its signing-key path, its data). Flower's own app verification
(``--trusted-entities``) accepts only signatures that Flower Hub attaches to the FABs it serves; a FAB submitted with
``flwr run`` carries none, so offline there is nothing to pin. ``fedproof client`` therefore starts the SuperNode
with ``--isolation process`` and this executor beside it, on the SuperNode's loopback Runtime API, in place of
``flower-superexec`` + ``flwr-clientapp``. For each task it:

1. acquires the task and its token, and pulls the message, context, run and FAB (Flower's Runtime API calls, as
   ``flwr-clientapp`` makes them);
2. refuses, with an error reply the server sees, a FAB whose SHA-256 is not in the kit's ``apps.json`` (the apps
   the operator pinned at provisioning);
3. otherwise runs the ClientApp **installed on the device** (``fl_client.client_app:app``), never the FAB's code,
   and pushes its reply and the context back.

It stays up between messages, so torch, the dataset and the keys are loaded once, not per message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("fedproof.app_runner")
APPS = "apps.json"
POLL_SECONDS = 0.2


def app_hash(fab_content: bytes) -> str:
    """The hash a FAB is pinned by: SHA-256 of its bytes (``flwr build`` is deterministic: fixed zip timestamps)."""
    return hashlib.sha256(fab_content).hexdigest()


def load_pinned(path: Path) -> frozenset[str]:
    """The app hashes a kit pins (``{"apps": ["<sha256>", ...]}``); a missing or unreadable file pins nothing."""
    try:
        doc = json.loads(Path(path).read_text())
        apps = frozenset(str(a) for a in doc["apps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{path}: not a pinned-apps file ({exc}); the device runs no app without one") from exc
    if not apps or not all(len(a) == 64 for a in apps):
        raise SystemExit(f"{path}: pins no app (SHA-256 hashes expected)")
    return apps


def _client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=list(interceptors),
                                                 retry_invoker=make_simple_http_retry_invoker())


def run_task(address: str, token: str, pinned: frozenset[str]) -> str:
    """Execute one acquired task; return what happened (for the log)."""
    from fl_client.client_app import app  # the installed app: imported once, kept warm

    client = _client(address, RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                     RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "the task failed before it ran"
    try:
        message, context, run, fab = pull_task_input(client)
        digest = app_hash(fab.content)
        if digest not in pinned:
            details = (f"app {run.fab_id or '?'} (FAB sha256 {digest[:16]}…) is not an app this device pins: "
                       "refused, nothing of it was run")
            reply = Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=details), reply_to=message)
        else:
            try:
                reply = app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as exc:  # noqa: BLE001 - as flwr-clientapp: the error goes back as a reply
                details = f"{type(exc)}:<'{exc}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        push_message(client, reply, context)
        return details or "completed"
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


def serve(address: str, pinned: frozenset[str], parent_pid: int | None = None, poll: float = POLL_SECONDS) -> None:
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)  # the SuperNode goes, this goes
    client = _client(address, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    while True:
        answer = client.AcquireTask(request)
        if answer.HasField("task") and answer.token:
            outcome = run_task(address, answer.token, pinned)
            log.info("task %s: %s", answer.task.task_id, outcome)
            continue
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the device's pinned ClientApp for a SuperNode "
                                                 "started with --isolation process.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (loopback)")
    parser.add_argument("--pinned-apps", required=True, type=Path, help="the kit's apps.json")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedproof-app-runner %(message)s")
    serve(args.runtime_api_address, load_pinned(args.pinned_apps), args.parent_pid)


if __name__ == "__main__":
    main()
