"""The control plane stays with the operator: the public address passes Flower's Fleet API and nothing else."""

from __future__ import annotations

import httpx
import pytest
from starlette.testclient import TestClient

from fedproof.launch.nodes import ServerKit, SuperLink, control_address
from fedproof.base.errors import ConfigError
from fl_server.fleet_gateway import create_app


@pytest.fixture()
def gateway():
    seen: list[httpx.Request] = []

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"answer:" + request.content, headers={"content-type": "application/x-protobuf"})

    app = create_app("https://127.0.0.1:9999", None, transport=httpx.MockTransport(superlink), hold=0)
    with TestClient(app) as client:
        yield client, seen


def test_fleet_requests_pass_unchanged(gateway) -> None:
    client, seen = gateway
    answer = client.post("/v1/fleet/pull-messages", content=b"\x01\x02", headers={"x-flwr-node-sig": "abc"})
    assert answer.status_code == 200 and answer.content == b"answer:\x01\x02"
    assert seen[0].url.path == "/v1/fleet/pull-messages" and seen[0].headers["x-flwr-node-sig"] == "abc"


@pytest.mark.parametrize("method,path", [
    ("POST", "/v1/control/list-runs"),          # flwr ls
    ("POST", "/v1/control/create-node-cli"),    # flwr supernode register
    ("POST", "/v1/control/start-run"),          # flwr run
    ("POST", "/v1/appio/pull-message"),         # the Runtime API
    ("GET", "/docs"),
    ("GET", "/v1/fleet/pull-messages"),
    ("POST", "/v1/fleet/../control/list-runs"),
])
def test_everything_else_is_not_found_and_never_reaches_the_superlink(gateway, method, path) -> None:
    client, seen = gateway
    assert client.request(method, path).status_code == 404
    assert seen == []


def test_the_superlink_binds_loopback_unless_told_otherwise(tmp_path) -> None:
    kit = ServerKit(tmp_path, "server.example", 9092, 3)
    assert control_address(kit) == ("127.0.0.1", 9093)
    link = SuperLink(kit, "0.0.0.0")
    assert link.command()[link.command().index("--host") + 1] == "127.0.0.1"
    assert "--listen" in link.gateway_command() and "0.0.0.0:9092" in link.gateway_command()
    assert SuperLink(kit, "0.0.0.0", control="10.0.0.5:7000").control == ("10.0.0.5", 7000)
    with pytest.raises(ConfigError):
        SuperLink(kit, "0.0.0.0", control="0.0.0.0:9092")  # the control plane on the public port


@pytest.mark.slow  # flwr build walks the whole checkout (.venv included): ~13 s per build here
def test_kits_pin_the_operators_app_and_nothing_else(tmp_path) -> None:
    """What `flwr run` of this project submits is the app a device runs; a FAB of any other app is not pinned."""
    from flwr.cli.build import build_fab_from_disk

    from fedproof.launch.provision import PROJECT, provision
    from fl_client.app_runner import app_hash, load_pinned

    kits = provision(tmp_path / "kits", 1, "127.0.0.1")
    pinned = load_pinned(kits.clients["0"] / "apps.json")
    assert pinned == {app_hash(build_fab_from_disk(PROJECT))}
    assert app_hash(build_fab_from_disk(PROJECT / "tests" / "foreign_app")) not in pinned
    (tmp_path / "empty.json").write_text('{"apps": []}')
    for bad in (tmp_path / "empty.json", tmp_path / "missing.json"):
        with pytest.raises(SystemExit, match="pin"):
            load_pinned(bad)


def test_an_empty_poll_is_held_until_a_message_comes_and_passed_on_unchanged() -> None:
    """The SuperNode's own signed request is re-sent, byte for byte, until the SuperLink has a message for it."""
    from flwr.proto.fleet_pb2 import PullMessagesResponse
    from flwr.proto.message_pb2 import Message as MessageProto

    seen: list[httpx.Request] = []
    empty = PullMessagesResponse().SerializeToString()
    full = PullMessagesResponse(messages_list=[MessageProto()]).SerializeToString()

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=full if len(seen) == 3 else empty)

    app = create_app("https://127.0.0.1:9999", None, transport=httpx.MockTransport(superlink), hold=5.0, poll=0.01)
    with TestClient(app) as client:
        answer = client.post("/v1/fleet/pull-messages", content=b"node 7",
                             headers={"x-flwr-node-sig": "sig", "flwr-public-key": "bm9kZS03"})
    assert answer.content == full and len(seen) == 3
    assert {(r.content, r.headers["x-flwr-node-sig"]) for r in seen} == {(b"node 7", "sig")}


@pytest.mark.parametrize("path,answer", [
    ("/v1/fleet/pull-messages", b""),  # no message: held for `hold` seconds at most, then passed on
    ("/v1/fleet/push-messages", b""),  # not a poll: never held
    ("/v1/fleet/pull-messages", b"\xff\xff"),  # not protobuf: passed on as it is
])
def test_only_empty_polls_are_held_and_never_past_the_hold(path, answer) -> None:
    import time

    seen: list[httpx.Request] = []

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=answer)

    held = path == "/v1/fleet/pull-messages" and answer == b""
    app = create_app("https://127.0.0.1:9999", None, transport=httpx.MockTransport(superlink), hold=0.3, poll=0.05)
    with TestClient(app) as client:
        started = time.monotonic()
        assert client.post(path, content=b"x", headers={"flwr-public-key": "bm9kZS0x"}).content == answer
        took = time.monotonic() - started
    assert (len(seen) > 2 and 0.2 <= took < 1.0) if held else (len(seen) == 1 and took < 0.2)


def test_a_node_cannot_make_the_gateway_poll_for_it_more_than_a_few_times_at_once() -> None:
    """Polls without a node key, and a node's polls past HOLDS_PER_NODE at once, are answered at once, not held."""
    import threading
    import time

    from fl_server.fleet_gateway import HOLDS_PER_NODE

    seen: list[httpx.Request] = []

    def superlink(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"")  # never a message

    app = create_app("https://127.0.0.1:9999", None, transport=httpx.MockTransport(superlink), hold=1.0, poll=0.05)
    took: list[float] = []
    with TestClient(app) as client:
        def poll(key: str) -> None:
            started = time.monotonic()
            client.post("/v1/fleet/pull-messages", content=b"x", headers={"flwr-public-key": key} if key else {})
            took.append(time.monotonic() - started)

        # one key, spelled four ways in base64 (the last character's unused bits differ): still one node
        spellings = ["Z3JlZWR5IQ==", "Z3JlZWR5IR==", "Z3JlZWR5IS==", "Z3JlZWR5IT=="]
        threads = [threading.Thread(target=poll, args=(spellings[i % 4],)) for i in range(HOLDS_PER_NODE + 3)]
        threads.append(threading.Thread(target=poll, args=("",)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(t >= 0.9 for t in took) == HOLDS_PER_NODE  # held for the whole second
    assert sum(t < 0.5 for t in took) == 4  # the rest answered at once


def _asgi_post(app, chunks: int, chunk: int, headers=(), release=None):
    """POST a body of ``chunks`` x ``chunk`` bytes straight into the ASGI app; returns (status, chunks it read).
    ``release``: an event the body waits on after its first chunk (a slow upload)."""
    import asyncio

    read = [0]

    async def receive():
        if read[0] == 1 and release is not None:
            await release.wait()
        read[0] += 1
        return {"type": "http.request", "body": b"\0" * chunk, "more_body": read[0] < chunks}

    status = []

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "method": "POST", "path": "/v1/fleet/push-messages", "raw_path": b"/v1/fleet/push-messages",
             "headers": list(headers), "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 9), "client": ("127.0.0.1", 10), "root_path": ""}

    async def run():
        await app(scope, receive, send)
        return status[0], read[0]

    return asyncio.ensure_future(run())


def test_the_gateway_refuses_oversized_bodies_as_they_stream_and_bounds_what_it_holds(monkeypatch) -> None:
    """The second review: one 768 MiB POST used to be read whole before the 413. Now the body is refused as soon
    as it passes MAX_BODY (or at once, by its declared length), and bodies held across connections are bounded:
    a slow honest upload is still served while a flood is answered 503."""
    import asyncio

    import fl_server.fleet_gateway as gateway

    app = create_app("https://127.0.0.1:9999", None, hold=0,
                     transport=httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok")))
    mib = 1 << 20

    async def scenario():
        status, read = await _asgi_post(app, 768, mib)  # 768 MiB offered, in 1 MiB chunks
        assert status == 413 and read <= gateway.MAX_BODY // mib + 1
        status, read = await _asgi_post(app, 768, mib, headers=[(b"content-length", str(768 * mib).encode())])
        assert status == 413 and read == 0  # refused by its declared length, before a byte is read
        monkeypatch.setattr(gateway, "MAX_BUFFERED", 8 * mib)
        release = asyncio.Event()
        honest = _asgi_post(app, 4, mib, release=release)  # a slow upload: holds 1 MiB, then waits
        await asyncio.sleep(0.05)
        flood = [await _asgi_post(app, 40, mib) for _ in range(3)]  # each would hold 40 MiB
        assert all(status == 503 and read <= 8 for status, read in flood)
        release.set()
        assert (await honest)[0] == 200  # the honest device is still served

    asyncio.run(scenario())
