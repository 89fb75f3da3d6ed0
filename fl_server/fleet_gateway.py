"""The only door to the SuperLink from outside: a TLS listener that passes Flower's Fleet API and nothing else.

flwr 1.41 serves its Fleet, Control and Runtime APIs as one HTTP app on one port (``--control-api-address`` is
deprecated and ignored), so a SuperLink bound to a public address lets anyone who holds the CA certificate (every
client kit does) list runs, register SuperNode keys and submit ServerApps. ``fedproof server start`` therefore
binds the SuperLink to loopback and puts this gateway on the public address. It forwards, unchanged, the exact
requests a SuperNode makes (``POST /v1/fleet/<method>``, headers and body as sent, so Flower's node
authentication still checks every one) to the loopback SuperLink over TLS, and answers 404 to everything else:
the Control API (``/v1/control/...``), the Runtime API, the docs. No Flower code is patched; the SuperLink,
SuperNodes and ``flwr`` are stock.

It also answers a SuperNode's polls as soon as there is something to answer. A stock SuperNode that pulls no
message sleeps a hard-coded 3 s before it asks again (``flwr/supernode/start_client_internal.py``), and one that
pulls a message whose parts are still being uploaded backs off 1 s, then 2 s; a round of three exchanges pays
that several times. The gateway holds such an answer (no message; "object not yet available") and asks the
SuperLink again (at once, then less and less often, up to every ``poll`` seconds), for up to ``hold`` seconds,
before passing the empty answer on: HTTP long polling. The hold is long because after an empty answer the
SuperNode sleeps its 3 s regardless. It re-sends the node's own request, unchanged, with the node's signature (Flower accepts a signed
timestamp for five minutes), so nothing is asked that the node did not ask, and the node never waits longer
than it would have.

Run it as ``python -m fl_server.fleet_gateway --listen HOST:PORT --upstream 127.0.0.1:PORT --certfile ... --keyfile
... --ca-certfile ...`` (``fedproof server start`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
from collections import Counter
import re
from collections.abc import AsyncIterator

import httpx
from flwr.proto.fleet_pb2 import PullMessagesResponse  # pylint: disable=E0611
from flwr.proto.message_pb2 import PullObjectResponse  # pylint: disable=E0611
from google.protobuf.message import DecodeError
from starlette.applications import Starlette

from fedproof.base.polling import poll_intervals
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z-]{0,63}$")
"""The Fleet API's methods, as Flower's SuperNode calls them (``/v1/fleet/pull-messages`` ...)."""
MAX_BODY = 64 << 20
"""Flower cuts messages into objects of at most a few MiB; anything far larger is not a Fleet request. Bodies are
read as they stream in and refused the moment they pass this (or a declared Content-Length does)."""
MAX_BUFFERED = 256 << 20
"""Bytes of request bodies held at once, over every connection: past it, a request is answered 503 at once, so
many parallel uploads cannot exhaust the server."""
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}
HOLD_SECONDS, POLL_SECONDS = 20.0, 0.25
HOLDS_PER_NODE, MAX_HOLDS = 3, 4096
"""Held polls at once per node key (a SuperNode pulls messages one at a time and object parts two at a time), and
in all: past either, a poll is answered at once, as the SuperLink would. A registered device opening many polls
cannot make the gateway ask the SuperLink many times more often than it asks itself."""
NODE_KEY_HEADER = "flwr-public-key"
"""How long an empty answer to a SuperNode's poll is held at most (under the SuperNode's 30 s request timeout),
and the longest wait between asking the SuperLink again meanwhile."""


def _no_message(body: bytes) -> bool:
    answer = PullMessagesResponse()
    answer.ParseFromString(body)
    return not answer.messages_list and not answer.HasField("reconnect")


def _not_yet_available(body: bytes) -> bool:
    answer = PullObjectResponse()
    answer.ParseFromString(body)
    return answer.object_found and not answer.object_available


HELD = {"/v1/fleet/pull-messages": _no_message, "/v1/fleet/pull-object": _not_yet_available}
"""The polls worth holding, and what an answer worth holding looks like."""


def worth_holding(path: str, answer: httpx.Response) -> bool:
    """Whether ``answer`` to a SuperNode's request is an empty answer to a poll (then the gateway asks again)."""
    if answer.status_code != 200 or path not in HELD:
        return False
    try:
        return HELD[path](answer.content)
    except DecodeError:
        return False


def node_key(header: str) -> bytes:
    """A node's public key as the SuperLink reads it (base64, strictly), so every spelling of one key is one node;
    empty when the header is missing or not base64 (the SuperLink refuses such a request anyway)."""
    try:
        return base64.b64decode(header, validate=True) if header else b""
    except (binascii.Error, ValueError):
        return b""


def is_fleet_request(method: str, path: str) -> bool:
    return method == "POST" and FLEET_PATH.match(path) is not None


async def _hold(client: httpx.AsyncClient, request: Request, path: str, body: bytes, headers: dict[str, str],
                answer: httpx.Response, hold: float, poll: float) -> httpx.Response:
    """Ask again, soon then every ``poll`` s, until the answer is worth passing on or ``hold`` s have passed."""
    loop = asyncio.get_running_loop()
    deadline, waits = loop.time() + hold, poll_intervals(0.02, poll)
    while worth_holding(path, answer) and loop.time() + (wait := next(waits)) < deadline:
        await asyncio.sleep(wait)
        if await request.is_disconnected():  # the node gave up: ask nothing more on its behalf
            break
        answer = await client.post(path, content=body, headers=headers)
    return answer


def create_app(upstream: str, ca_certfile: str | None, timeout: float = 120.0,
               transport: httpx.AsyncBaseTransport | None = None, hold: float = HOLD_SECONDS,
               poll: float = POLL_SECONDS) -> Starlette:
    """The gateway as an ASGI app forwarding Fleet requests to ``upstream`` (``https://127.0.0.1:PORT``), holding
    empty answers to polls for up to ``hold`` seconds (0: never)."""
    client = httpx.AsyncClient(base_url=upstream, verify=ca_certfile if ca_certfile else False, timeout=timeout,
                               transport=transport)
    holding: Counter[bytes] = Counter()
    buffered = [0]

    async def forward(request: Request) -> Response:
        if not is_fleet_request(request.method, request.url.path):
            return PlainTextResponse("not found: this address serves only the Fleet API", status_code=404)
        declared = request.headers.get("content-length", "")
        if declared and (not declared.isdigit() or int(declared) > MAX_BODY):
            return PlainTextResponse("request too large", status_code=413)
        body, held = bytearray(), 0
        try:
            async for chunk in request.stream():  # streamed against both limits: never more than they allow
                body += chunk
                buffered[0], held = buffered[0] + len(chunk), held + len(chunk)
                if len(body) > MAX_BODY:
                    return PlainTextResponse("request too large", status_code=413)
                if buffered[0] > MAX_BUFFERED:
                    return PlainTextResponse("the gateway is busy: retry", status_code=503)
            return await _forward(request, bytes(body))
        finally:
            buffered[0] -= held

    async def _forward(request: Request, body: bytes) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        path = request.url.path
        node = node_key(request.headers.get(NODE_KEY_HEADER, ""))
        try:
            answer = await client.post(path, content=body, headers=headers)
            if worth_holding(path, answer) and node and holding[node] < HOLDS_PER_NODE \
                    and sum(holding.values()) < MAX_HOLDS:  # the SuperLink accepted the node's signature: a node
                holding[node] += 1
                try:
                    answer = await _hold(client, request, path, body, headers, answer, hold, poll)
                finally:
                    holding[node] -= 1
                    if not holding[node]:
                        del holding[node]
        except httpx.HTTPError as exc:
            return PlainTextResponse(f"the SuperLink does not answer ({type(exc).__name__})", status_code=502)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS | {"content-encoding"}}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    routes = [Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve the Fleet API on (public)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the SuperLink (loopback)")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--ca-certfile", help="CA that signed the SuperLink's certificate (omit with --insecure)")
    parser.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (tests only)")
    parser.add_argument("--hold", type=float, default=HOLD_SECONDS, help="longest hold of an empty poll answer, s")
    parser.add_argument("--poll", type=float, default=POLL_SECONDS, help="longest wait before a held poll asks again, s")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    scheme = "http" if args.insecure else "https"
    app = create_app(f"{scheme}://{args.upstream}", None if args.insecure else args.ca_certfile, hold=args.hold,
                     poll=args.poll)
    tls = {} if args.insecure else {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile}
    uvicorn.run(app, host=host.strip("[]"), port=int(port), access_log=False, log_level="warning", **tls)


if __name__ == "__main__":
    main()
