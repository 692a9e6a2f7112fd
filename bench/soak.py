"""Soak test: many short-lived tokens, random identity-provider faults, a steady caller load.

    .venv/bin/python -m bench.soak --seconds 600 --providers 50 --ttl 2

Starts fake HIRO (JSON /app + /refresh) and generic OAuth2 servers on
127.0.0.1 that rotate refresh tokens and revoke the old ones, wraps them in a
chaos layer that answers a share of token requests with 500, 503 +
Retry-After, 429, an HTML page, a 200 with garbage, a cut-off body or a
stall past the broker's timeout (always *without* letting the fake issue a
token, so a fault never rotates a refresh token behind the broker's back),
runs `broker serve` as a separate process with a state directory, and fetches
tokens from it at a steady rate. At the end it prints:

* expired tokens served: a token whose expiry (on the issuing fake's clock)
  was before the request was even sent; must be 0;
* refused refresh tokens: refresh requests the fake refused because the
  broker used a dead refresh token (a lost rotation); must be 0;
* token requests per provider against the ideal (one per 2/3 lifetime);
* the broker's resident memory over time (flat means no leak): after warm-up
  (30 s) and every ``--report-every`` seconds (600 by default), printed as
  the run goes and again at the end, with the slope of a least-squares line
  through the samples after warm-up (MB per minute).

``--heapwatch FILE`` runs the broker under ``bench._heapwatch`` (tracemalloc
with ``--trace``, gc-tracked type counts, collector statistics) and appends
its samples to FILE: for finding what grows when the memory does.

Everything is bounded in time, targets only 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.fakes import hiro
from broker.fakes.base import FakeProvider
from broker.fakes.hiro import FakeHiro
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread

REPO = Path(__file__).resolve().parent.parent
"""The broker process runs from here, so it imports this checkout's ``broker``."""
WARM_UP = 30.0
"""Seconds after readiness before memory counts as warmed up."""

FAULTS = ("500", "503", "429", "html", "garbage", "cut", "stall")


@dataclass
class Chaos:
    """An ASGI layer that fails a share of token requests and counts refused refreshes."""

    app: ASGIApp
    rate: float
    stall: float
    rng: random.Random
    faults: Counter[str] = field(default_factory=Counter)
    refused_refreshes: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_token = scope["type"] == "http" and path.endswith(("/app", "/refresh", "/token"))
        if not is_token:
            await self.app(scope, receive, send)
            return
        if self.rng.random() < self.rate:
            fault = self.rng.choice(FAULTS)
            self.faults[fault] += 1
            await self._fail(fault, send)
            return
        body = b"".join([m.get("body", b"") async for m in _drain(receive)])
        refreshing = path.endswith("/refresh") or b"grant_type=refresh_token" in body

        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def watch(message: Message) -> None:
            start = message["type"] == "http.response.start"
            if start and refreshing and message["status"] in (400, 401):
                self.refused_refreshes += 1
            await send(message)

        await self.app(scope, replay, watch)

    async def _fail(self, fault: str, send: Send) -> None:
        if fault == "stall":
            await asyncio.sleep(self.stall)
            await _respond(send, 504, b"gateway timeout", "text/plain")
        elif fault == "cut":
            headers = [(b"content-type", b"application/json"), (b"content-length", b"500")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b'{"access', "more_body": False})
        elif fault == "html":
            await _respond(send, 502, b"<html><h1>Bad Gateway</h1></html>", "text/html")
        elif fault == "garbage":
            await _respond(send, 200, b'{"token_type": "bearer"', "application/json")
        elif fault == "429":
            await _respond(send, 429, b'{"error":"slow_down"}', "application/json", "1")
        elif fault == "503":
            body = b'{"error":"temporarily_unavailable"}'
            await _respond(send, 503, body, "application/json", "1")
        else:
            await _respond(send, 500, b'{"error":"server_error"}', "application/json")


async def _drain(receive: Receive):  # type: ignore[no-untyped-def]  # async generator of messages
    while True:
        message = await receive()
        yield message
        if not message.get("more_body"):
            return


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, retry_after: str | None = None
) -> None:
    headers = [(b"content-type", content_type.encode())]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def config_yaml(port: int, state: Path, n: int, hiro_url: str, oauth_url: str) -> str:
    lines = [
        f"port: {port}",
        f"state_dir: {state}",
        "log_level: warning",
        "refresh: {backoff_initial: 0.1, backoff_max: 2}",
        "providers:",
    ]
    for i in range(n):
        if i % 2 == 0:
            lines += [
                f"  p{i}:",
                "    type: hiro",
                f"    url: {hiro_url}",
                f"    client_id: {hiro.DEMO_CLIENT_ID}",
                f"    client_secret: {hiro.DEMO_CLIENT_SECRET}",
                f"    username: {hiro.DEMO_USERNAME}",
                f"    password: {hiro.DEMO_PASSWORD}",
                "    timeout: 0.5",
            ]
        else:
            lines += [
                f"  p{i}:",
                "    type: oauth2",
                f"    token_url: {oauth_url}/oauth/token",
                "    grant: password",
                "    client_id: app",
                "    client_secret: app-secret",
                "    username: alice",
                "    password: alice-pw",
                "    timeout: 0.5",
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--providers", type=int, default=50)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--rate", type=float, default=200, help="token GETs per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--report-every", type=float, default=600, help="print resident memory every N s"
    )
    parser.add_argument("--ready-timeout", type=float, default=30, help="seconds to wait")
    parser.add_argument("--heapwatch", type=Path, help="run the broker under bench._heapwatch")
    parser.add_argument("--heapwatch-every", type=float, default=60)
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames for heapwatch")
    parser.add_argument("--garbage-every", type=int, default=0, help="see bench._heapwatch")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    fake_hiro = FakeHiro(ttl=args.ttl, rotate_refresh_tokens=True)
    fake_oauth = FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=args.ttl,
        rotate_refresh_tokens=True,
        revoke_rotated_refresh_tokens=True,
    )
    chaos = [
        Chaos(fake.app, args.fault_rate, 1.0, random.Random(rng.random()))
        for fake in (fake_hiro, fake_oauth)
    ]
    fakes: dict[str, FakeProvider] = {}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_in_thread(chaos[0]) as hiro_url,
        serve_in_thread(chaos[1]) as oauth_url,
    ):
        # The cut-body fault makes uvicorn log a protocol error per occurrence: expected
        # here. (Set after the fakes start: uvicorn.Config sets this logger's level.)
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        config = Path(tmp) / "soak.yaml"
        state = Path(tmp) / "state"
        config.write_text(config_yaml(port, state, args.providers, hiro_url, oauth_url))
        for i in range(args.providers):
            fakes[f"p{i}"] = fake_hiro if i % 2 == 0 else fake_oauth
        command = [sys.executable, "-m", "broker", "serve", "--config", str(config)]
        if args.heapwatch is not None:
            watch = [
                *("--out", str(args.heapwatch.resolve())),
                *("--every", str(args.heapwatch_every)),
                *("--trace", str(args.trace)),
                *("--garbage-every", str(args.garbage_every)),
            ]
            command[1:3] = ["-m", "bench._heapwatch", *watch, "--"]
        broker = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            result = _run(args, base, broker.pid, fakes, rng)
        finally:
            broker.send_signal(signal.SIGTERM)
            exit_code = broker.wait(timeout=15)
    _report(args, result, chaos, fake_hiro, fake_oauth, exit_code)
    ok = result["expired"] == 0 and sum(c.refused_refreshes for c in chaos) == 0
    return 0 if ok else 1


def _run(
    args: argparse.Namespace,
    base: str,
    pid: int,
    fakes: dict[str, FakeProvider],
    rng: random.Random,
) -> dict[str, object]:
    client = httpx.Client(base_url=base, timeout=10)
    deadline = time.monotonic() + args.ready_timeout
    while True:
        try:
            if client.get("/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"broker did not become ready within {args.ready_timeout:g} s")
        time.sleep(0.1)
    started = time.monotonic()
    memory: list[tuple[float, float]] = [(0.0, rss_mb(pid))]
    statuses: Counter[int] = Counter()
    expired = borderline = 0
    names = list(fakes)
    interval = 1.0 / args.rate
    next_sample = 10.0
    next_report = WARM_UP
    while (elapsed := time.monotonic() - started) < args.seconds:
        name = rng.choice(names)
        sent = time.time()
        response = client.get(f"/token/{name}")
        received = time.time()
        statuses[response.status_code] += 1
        if response.status_code == 200:
            token = response.json()["access_token"]
            expires_at = fakes[name].access_token_expires_at(token)
            if expires_at is None or expires_at <= sent:
                expired += 1
            elif expires_at <= received:
                borderline += 1
        if elapsed >= next_sample:
            memory.append((elapsed, rss_mb(pid)))
            next_sample += 10.0
        if elapsed >= next_report:
            print(_memory_line(memory), file=sys.stderr, flush=True)
            next_report = args.report_every * (elapsed // args.report_every + 1)
        time.sleep(interval)
    memory.append((time.monotonic() - started, rss_mb(pid)))
    providers = client.get("/providers").json()["providers"]
    client.close()
    return {
        "elapsed": time.monotonic() - started,
        "statuses": statuses,
        "expired": expired,
        "borderline": borderline,
        "memory": memory,
        "providers": providers,
    }


def _memory_line(memory: list[tuple[float, float]]) -> str:
    t, mb = memory[-1]
    warm = _warm(memory)
    line = f"[{t / 60:5.1f} min] broker RSS {mb:.1f} MB"
    if warm is not None:
        slope = _slope(memory)
        line += f", {mb - warm:+.1f} MB since warm-up ({warm:.1f} MB)"
        if slope is not None:
            line += f", slope {slope:+.3f} MB/min"
    return line


def _warm(memory: list[tuple[float, float]]) -> float | None:
    """Resident memory at the first sample after warm-up."""
    return next((mb for t, mb in memory if t >= WARM_UP), None)


def _slope(memory: list[tuple[float, float]]) -> float | None:
    """MB per minute: least squares through the samples after warm-up."""
    points = [(t / 60, mb) for t, mb in memory if t >= WARM_UP]
    if len(points) < 2:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_mb = sum(mb for _, mb in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / spread


def _every(memory: list[tuple[float, float]], step: float) -> list[list[float]]:
    """``[minute, MB]`` at warm-up, at each *step* seconds after the start, and at the end."""
    marks = [WARM_UP, *(step * k for k in range(1, int(memory[-1][0] // step) + 1))]
    picked: list[list[float]] = []
    for mark in marks:
        t, mb = next(((t, mb) for t, mb in memory if t >= mark), memory[-1])
        if not picked or picked[-1][0] != round(t / 60, 1):
            picked.append([round(t / 60, 1), round(mb, 1)])
    if picked[-1][0] != round(memory[-1][0] / 60, 1):
        picked.append([round(memory[-1][0] / 60, 1), round(memory[-1][1], 1)])
    return picked


def _report(
    args: argparse.Namespace,
    result: dict[str, object],
    chaos: list[Chaos],
    fake_hiro: FakeHiro,
    fake_oauth: FakeOAuth2,
    exit_code: int,
) -> None:
    elapsed = float(result["elapsed"])  # type: ignore[arg-type]
    memory: list[tuple[float, float]] = result["memory"]  # type: ignore[assignment]
    statuses: Counter[int] = result["statuses"]  # type: ignore[assignment]
    providers: dict[str, dict[str, object]] = result["providers"]  # type: ignore[assignment]
    faults = sum((c.faults for c in chaos), Counter())
    token_requests = len(fake_hiro.token_requests()) + len(fake_oauth.token_requests())
    logins = len(fake_hiro.token_requests("password")) + len(fake_oauth.token_requests("password"))
    ideal = args.providers * elapsed / (args.ttl * 2 / 3)
    successes = sum(int(p["refreshes"]) for p in providers.values())  # type: ignore[call-overload]
    warm = _warm(memory)
    if warm is None:
        warm = memory[-1][1]
    slope = _slope(memory)
    print(
        json.dumps(
            {
                "seconds": round(elapsed),
                "providers": args.providers,
                "token_lifetime_s": args.ttl,
                "fault_rate": args.fault_rate,
                "faults_injected": dict(faults),
                "token_gets": dict(statuses),
                "expired_tokens_served": result["expired"],
                "borderline_expiry_in_flight": result["borderline"],
                "refused_refresh_tokens": sum(c.refused_refreshes for c in chaos),
                "password_logins": logins,
                "idp_token_requests": token_requests,
                "successful_token_fetches": successes,
                "ideal_fetches_at_2_3_lifetime": round(ideal),
                "fetches_vs_ideal": round(successes / ideal, 3),
                "requests_vs_ideal": round(token_requests / ideal, 3),
                "rss_mb_start_warm_end_max": [
                    round(memory[0][1], 1),
                    round(warm, 1),
                    round(memory[-1][1], 1),
                    round(max(m for _, m in memory), 1),
                ],
                "rss_mb_at_minute": _every(memory, args.report_every),
                "rss_slope_mb_per_min": None if slope is None else round(slope, 4),
                "broker_exit_code": exit_code,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
