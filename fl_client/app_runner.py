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

It stays up between messages, so torch, the dataset and the keys are loaded once, not per message. It asks for
a task at once after the last one, then less and less often, at least every :data:`POLL_SECONDS`; it pulls a
message's parts that the SuperNode is still receiving every :data:`PART_RETRY_SECONDS` at first (Flower's
``pull_task_input`` backs off 1 s, then 2 s, then 4 s).
"""

from __future__ import annotations

import signal


def _stop(signum: int, _frame) -> None:
    """SIGINT or SIGTERM: end at once, quietly (no KeyboardInterrupt traceback from deep inside a poll)."""
    raise SystemExit(0)


if __name__ == "__main__":  # before the imports below (seconds): a device stopped while starting stops quietly too
    for _signum in (signal.SIGINT, signal.SIGTERM):  # also in the background, where SIGINT starts out ignored
        signal.signal(_signum, _stop)

import argparse
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedproof.base.polling import poll_intervals

log = logging.getLogger("fedproof.app_runner")
APPS = "apps.json"
POLL_SECONDS = 0.25
PART_RETRY_SECONDS, PART_RETRY_CAP = 0.02, 0.25


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


def pull_task_input(client: RuntimeHttpClient):
    """The task's message, context, run and FAB: ``flwr.supernode.runtime.run_clientapp.pull_task_input``, with
    short retries for message parts not yet in the SuperNode's store."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PART_RETRY_SECONDS, backoff_cap=PART_RETRY_CAP)
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message does not carry its own id
    return message, context, run, fab


def run_task(address: str, token: str, pinned: frozenset[str]) -> str:
    """Execute one acquired task; return what happened (for the log)."""
    from fl_client.client_app import app  # the installed app: imported once, kept warm

    client = _client(address, RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                     RuntimeTokenHttpInterceptor(token))
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "the task failed before it ran"
    started = time.perf_counter()
    try:
        message, context, run, fab = pull_task_input(client)
        pulled = time.perf_counter()
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
        ran = time.perf_counter()
        push_message(client, reply, context)
        return (f"{message.metadata.message_type}: {details or 'completed'} (message pulled in "
                f"{pulled - started:.2f} s, ran {ran - pulled:.2f} s, reply pushed in {time.perf_counter() - ran:.2f} s)")
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


def _exit_with(parent_pid: int) -> None:
    """End this executor once its SuperNode has gone, however it went. Flower's own monitor raises SIGINT, which a
    process started in the background ignores, so executors outlived their SuperNodes and later took tasks from a
    new one on the same port. This one sends SIGTERM (handled by :func:`_stop`) and, should the process still be
    running 5 s later, exits it outright."""

    def watch() -> None:
        while True:
            time.sleep(0.2)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                continue  # alive, another user's
            if _is_zombie(parent_pid):
                break
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-monitor").start()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def serve(address: str, pinned: frozenset[str], parent_pid: int | None = None, poll: float = POLL_SECONDS) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background, where SIGINT is ignored
        signal.signal(signum, _stop)
    if parent_pid is not None:
        _exit_with(parent_pid)  # the SuperNode goes, this goes
    client = _client(address, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    waits = poll_intervals(0.02, poll)
    while True:
        answer = client.AcquireTask(request)
        if answer.HasField("task") and answer.token:
            outcome = run_task(address, answer.token, pinned)
            log.info("task %s: %s", answer.task.task_id, outcome)
            waits = poll_intervals(0.02, poll)  # the next message of a round usually follows within a second
            continue
        time.sleep(next(waits))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the device's pinned ClientApp for a SuperNode "
                                                 "started with --isolation process.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (loopback)")
    parser.add_argument("--pinned-apps", required=True, type=Path, help="the kit's apps.json")
    parser.add_argument("--parent-pid", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedproof-app-runner %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    serve(args.runtime_api_address, load_pinned(args.pinned_apps), args.parent_pid)


if __name__ == "__main__":
    main()
