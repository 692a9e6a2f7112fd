"""A fake OAuth2 identity provider for the benches: ``python -m bench._idp --ttl 60 --clients 100``.

Runs :class:`broker.fakes.FakeOAuth2` (clients ``c0``..``c<n-1>``, secret ``s``; ``bench`` /
``bench-secret``; user ``bench-user`` / ``bench-pw``) in its own process on 127.0.0.1, so its
work never competes with the bench's measuring client for one GIL, behind a layer that

* records every token request's arrival time (before any delay) and client id;
* delays token requests by ``--delay`` seconds (a realistic identity provider answers in
  tens of milliseconds; the in-process fake in microseconds);
* with ``--gated``, holds token requests until the bench opens the gate;
* serves ``/_bench/log``, ``/_bench/set`` (delay, ttl, gate) and ``/_bench/expiries``.

Prints ``READY <base url>`` once listening; stops on SIGTERM or when its parent goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import signal
import time
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote_plus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import FakeServer

TOKEN_PATH = "/oauth/token"  # noqa: S105  # a path, not a secret


class BenchLayer:
    def __init__(self, fake: FakeOAuth2, delay: float, gated: bool) -> None:
        self.fake = fake
        self.app: ASGIApp = fake.app
        self.delay = delay
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.log: list[tuple[float, str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/_bench/"):
            await self._admin(scope, await _body(receive), send)
            return
        if path != TOKEN_PATH:
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        body = await _body(receive)
        form = dict(parse_qsl(body.decode("latin-1")))
        self.log.append((arrived, _client_id(scope, form), form.get("grant_type", "")))
        await self.gate.wait()
        if self.delay > 0:
            await asyncio.sleep(self.delay)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _admin(self, scope: Scope, body: bytes, send: Send) -> None:
        path: str = scope["path"]
        answer: Any = None
        if path == "/_bench/log":
            query = parse_qs(scope.get("query_string", b"").decode())
            since = float(query.get("since", ["0"])[0])
            answer = {"now": time.time(), "requests": [r for r in self.log if r[0] >= since]}
        elif path == "/_bench/set":
            values = json.loads(body)
            if "delay" in values:
                self.delay = float(values["delay"])
            if "ttl" in values:
                self.fake.ttl = float(values["ttl"])
            if "gate" in values:
                if values["gate"]:
                    self.gate.set()
                else:
                    self.gate.clear()
            answer = {"ok": True}
        elif path == "/_bench/expiries":
            answer = [self.fake.access_token_expires_at(t) for t in json.loads(body)]
        status = 200 if answer is not None else 404
        payload = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _client_id(scope: Scope, form: dict[str, str]) -> str:
    if "client_id" in form:
        return form["client_id"]
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value[:6].lower() == b"basic ":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                user = base64.b64decode(value[6:]).decode().split(":", 1)[0]
                return unquote_plus(user)
    return ""


async def _run(args: argparse.Namespace) -> None:
    clients = {f"c{i}": "s" for i in range(args.clients)}
    clients["bench"] = "bench-secret"
    fake = FakeOAuth2(clients=clients, users={"bench-user": "bench-pw"}, ttl=args.ttl)
    layer = BenchLayer(fake, args.delay, args.gated)
    server = FakeServer(layer, args.host, args.port)
    url = await server.start()
    print(f"READY {url}", flush=True)
    parent = os.getppid()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        while not stopping.is_set() and os.getppid() == parent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
    finally:
        await server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttl", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--gated", action="store_true")
    asyncio.run(_run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
