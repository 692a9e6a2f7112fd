"""A fake OAuth2 identity provider for the benches: ``python -m bench._idp --ttl 60 --clients 100``.

Runs :class:`broker.fakes.FakeOAuth2` (clients ``c0``..``c<n-1>``, secret ``s``; ``bench`` /
``bench-secret``; user ``bench-user`` / ``bench-pw``) in its own process on 127.0.0.1, so its
work never competes with the bench's measuring client for one GIL, behind a layer that

* records every token request's arrival time (before any delay) and client id;
* delays token requests by ``--delay`` seconds (a realistic identity provider answers in
  tens of milliseconds; the in-process fake in microseconds);
* with ``--gated``, holds token requests until the bench opens the gate;
* records every token answer: ``time.monotonic()`` and ``time.time()`` once its last byte
  was handed to the socket, the status, the access token issued (if any) and the grant
  (``/_bench/answers``). CLOCK_MONOTONIC is one clock for every process of the host, so a
  bench can compare these times with its own;
* answers ``/_bench/wait?count=K&timeout=T`` once more than K token requests have arrived
  (or after T seconds): a bench can get ready before the answer goes out;
* serves ``/_bench/log``, ``/_bench/set`` (delay, ttl, gate) and ``/_bench/expiries``.

``--reuse-detection`` makes a rotated-away refresh token presented again revoke the whole
login (``reuse_revokes_family``): replicas that raced each other would show as errors.

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
        self.answers: list[tuple[float, float, int, str | None, str]] = []
        """(monotonic and wall time the answer was sent, status, access token or None,
        grant)."""
        self._arrived = asyncio.Event()

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
        grant = form.get("grant_type", "")
        self.log.append((arrived, _client_id(scope, form), grant))
        self._arrived.set()
        self._arrived = asyncio.Event()
        await self.gate.wait()
        if self.delay > 0:
            await asyncio.sleep(self.delay)

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        status = 0
        chunks: list[bytes] = []

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent = (time.monotonic(), time.time())
                self.answers.append((*sent, status, _access_token(chunks), grant))

        await self.app(scope, replay, recording_send)

    async def _admin(self, scope: Scope, body: bytes, send: Send) -> None:
        path: str = scope["path"]
        answer: Any = None
        if path == "/_bench/log":
            query = parse_qs(scope.get("query_string", b"").decode())
            since = float(query.get("since", ["0"])[0])
            answer = {"now": time.time(), "requests": [r for r in self.log if r[0] >= since]}
        elif path == "/_bench/answers":
            query = parse_qs(scope.get("query_string", b"").decode())
            start = int(query.get("from", ["0"])[0])
            answer = {"now": time.monotonic(), "answers": self.answers[start:]}
        elif path == "/_bench/wait":
            query = parse_qs(scope.get("query_string", b"").decode())
            count = int(query.get("count", ["0"])[0])
            deadline = time.monotonic() + float(query.get("timeout", ["1"])[0])
            while len(self.log) <= count and (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            answer = {"count": len(self.log)}
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


def _access_token(chunks: list[bytes]) -> str | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        token = json.loads(b"".join(chunks)).get("access_token")
        return token if isinstance(token, str) else None
    return None


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
    fake = FakeOAuth2(
        clients=clients,
        users={"bench-user": "bench-pw"},
        ttl=args.ttl,
        reuse_revokes_family=args.reuse_detection,
    )
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
    parser.add_argument("--reuse-detection", action="store_true")
    asyncio.run(_run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
