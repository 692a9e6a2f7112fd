"""Baseline servers for ``bench.serving``: the same bytes as the broker, without the broker.

    python -m bench._bare --port 9000 --body-file body.json --kind asgi

The uvicorn configuration is the broker's own (:func:`broker.server.uvicorn.uvicorn_config` with the
app swapped), so loop, HTTP parser, connection guard (its protocol; uvicorn binds the socket
here, so the cap is decided when a connection is made), logging, lifespan and worker count
are identical. Kinds:

* ``asgi``: a raw ASGI callable answering every request with the prepared bytes and the
  broker's headers: the practical limit of the server stack;
* ``starlette``: one Starlette ``Route("/token/{provider}")`` returning a ``Response``;
* ``fastapi``: one FastAPI ``@app.get("/token/{provider}")`` with a plain ``provider: str``.

The last two split the broker/bare gap into framework cost and the broker's own code.
``--unguarded`` serves the same without the connection guard, to measure what it costs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.config.load import parse_config
from broker.ops.logs import configure_logging
from broker.server.uvicorn import uvicorn_config

HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
KINDS = ("asgi", "starlette", "fastapi")


def raw_app(body: bytes) -> ASGIApp:
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
        *((k.lower().encode(), v.encode()) for k, v in HEADERS.items()),
    ]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    message = {"type": "http.response.body", "body": body}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(start)
        await send(message)

    return app


def starlette_app(body: bytes) -> ASGIApp:
    async def token(request: Request) -> Response:
        return Response(body, media_type="application/json", headers=HEADERS)

    return Starlette(routes=[Route("/token/{provider}", token)])


def fastapi_app(body: bytes) -> ASGIApp:
    app = FastAPI()

    @app.get("/token/{provider}", response_model=None)
    async def token(provider: str) -> Response:
        return Response(body, media_type="application/json", headers=HEADERS)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--kind", choices=KINDS, default="asgi")
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--unguarded",
        action="store_true",
        help="uvicorn's own HTTP protocol, without broker.server.connguard (what the guard costs)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="raw ASGI app under uvicorn without importing the broker (startup floor)",
    )
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    if args.plain:
        uvicorn.run(raw_app(body), port=args.port, log_level="warning", access_log=False)
        return 0
    # Any valid settings do: only the server options are used, the broker app is discarded.
    settings = parse_config(
        f"port: {args.port}\nlog_level: {args.log_level}\nproviders:\n"
        "  x: {type: oauth2, token_url: 'http://127.0.0.1:9/t', grant: client_credentials,"
        " client_id: a, client_secret: b}\n"
    )
    configure_logging(settings.log_level)
    config = uvicorn_config(settings)
    builders = {"asgi": raw_app, "starlette": starlette_app, "fastapi": fastapi_app}
    config.app = builders[args.kind](body)
    if args.unguarded:
        config.http = "auto"  # uvicorn's default protocol class, not the guard's wrapper
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
