"""The only door to the SuperLink from outside: a TLS listener that passes Flower's Fleet API and nothing else.

flwr 1.41 serves its Fleet, Control and Runtime APIs as one HTTP app on one port (``--control-api-address`` is
deprecated and ignored), so a SuperLink bound to a public address lets anyone who holds the CA certificate (every
client kit does) list runs, register SuperNode keys and submit ServerApps. ``fedproof server start`` therefore
binds the SuperLink to loopback and puts this gateway on the public address. It forwards, unchanged, the exact
requests a SuperNode makes (``POST /v1/fleet/<method>``, headers and body as sent, so Flower's node
authentication still checks every one) to the loopback SuperLink over TLS, and answers 404 to everything else:
the Control API (``/v1/control/...``), the Runtime API, the docs. No Flower code is patched; the SuperLink,
SuperNodes and ``flwr`` are stock.

Run it as ``python -m fl_server.fleet_gateway --listen HOST:PORT --upstream 127.0.0.1:PORT --certfile ... --keyfile
... --ca-certfile ...`` (``fedproof server start`` does).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z-]{0,63}$")
"""The Fleet API's methods, as Flower's SuperNode calls them (``/v1/fleet/pull-messages`` ...)."""
MAX_BODY = 64 << 20
"""Flower cuts messages into objects of at most a few MiB; anything far larger is not a Fleet request."""
_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"}


def is_fleet_request(method: str, path: str) -> bool:
    return method == "POST" and FLEET_PATH.match(path) is not None


def create_app(upstream: str, ca_certfile: str | None, timeout: float = 120.0,
               transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The gateway as an ASGI app forwarding Fleet requests to ``upstream`` (``https://127.0.0.1:PORT``)."""
    client = httpx.AsyncClient(base_url=upstream, verify=ca_certfile if ca_certfile else False, timeout=timeout,
                               transport=transport)

    async def forward(request: Request) -> Response:
        if not is_fleet_request(request.method, request.url.path):
            return PlainTextResponse("not found: this address serves only the Fleet API", status_code=404)
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("request too large", status_code=413)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        try:
            answer = await client.post(request.url.path, content=body, headers=headers)
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
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    scheme = "http" if args.insecure else "https"
    app = create_app(f"{scheme}://{args.upstream}", None if args.insecure else args.ca_certfile)
    tls = {} if args.insecure else {"ssl_certfile": args.certfile, "ssl_keyfile": args.keyfile}
    uvicorn.run(app, host=host.strip("[]"), port=int(port), access_log=False, log_level="warning", **tls)


if __name__ == "__main__":
    main()
