"""Single flight: 1,000 concurrent callers cause exactly one identity-provider token request.

    .venv/bin/python -m bench.single_flight [--callers 1000] [--hold 0.5] [--json]

Two phases against one broker process (``python -m broker serve``) and the fake IdP
(``bench._idp --gated``, token TTL 60 s), with asyncio + httpx (one connection per caller):

1. cold: the broker's first token request for the provider is held at the fake IdP; the
   callers' ``GET /token/p0`` all arrive while it is in flight;
2. ``min_valid``: once the token has less than ``min_valid`` seconds left, the callers send
   ``GET /token/p0?min_valid=<n>``, which no current token satisfies, so one refresh is
   needed; it is held the same way.

The fake IdP holds the token request until every caller's TCP connection is established at
the broker (read from ``/proc/net/tcp``) and at least ``--hold`` seconds (default 0.5) have
passed, so the callers overlap the request for certain. Pass: exactly 1 IdP token request
per phase and all callers answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    Idp,
    broker_config,
    emit,
    free_port,
    machine,
    percentile,
    start_broker,
    start_idp,
    table,
    verdict,
    wait_ready,
)

TTL = 60.0
POOL = 50


def established(port: int) -> int:
    """ESTABLISHED TCP connections whose local port is *port* (the server side)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def phase(
    name: str,
    broker_url: str,
    port: int,
    idp: Idp,
    callers: int,
    hold: float,
    path: str,
    since: float,
) -> dict[str, Any]:
    """Fire *callers* concurrent GETs while the IdP holds the token request; count both.

    The callers are spread over several httpx clients of POOL connections each: one pool
    of 1,000 connections costs httpx seconds of CPU (its pool is scanned per request), which
    would measure the client, not the broker.
    """
    idp.set(gate=False)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    after_release: list[float] = []
    opened_at = 0.0
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    clients = [
        httpx.AsyncClient(base_url=broker_url, limits=limits, timeout=60, trust_env=False)
        for _ in range(-(-callers // POOL))
    ]
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)

        async def call(client: httpx.AsyncClient) -> None:
            started = time.monotonic()
            try:
                response = await client.get(path)
                statuses[response.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[-1] += 1
                print(f"# {name}: {type(exc).__name__}: {exc}")
            done = time.monotonic()
            latencies.append(done - started)
            after_release.append(done - opened_at)

        before = established(port)
        tasks = [asyncio.create_task(call(clients[i // POOL])) for i in range(callers)]
        first_request = time.monotonic()
        deadline = first_request + 20
        # Every caller connected (and its request written right after), and the hold served.
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if established(port) - before >= callers and time.monotonic() - first_request >= hold:
                break
        connected = established(port) - before
        await asyncio.sleep(0.2)  # let the last requests be read and parsed by the broker
        opened_at = time.monotonic()
        idp.set(gate=True)
        await asyncio.gather(*tasks)
    requests = idp.log(since)
    return {
        "phase": name,
        "callers": callers,
        "connected_before_idp_answered": connected,
        "held_s": opened_at - first_request,
        "idp_token_requests": len(requests),
        "ok_200": statuses.get(200, 0),
        "other_statuses": {k: v for k, v in statuses.items() if k != 200},
        "latency_p50_s": percentile(latencies, 50),
        "latency_max_s": max(latencies),
        "after_release_p50_s": percentile(after_release, 50),
        "after_release_max_s": max(after_release),
        "met": len(requests) == 1 and statuses.get(200, 0) == callers,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    idp = start_idp(ttl=TTL, gated=True, delay=0.0)
    port = free_port()
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = broker_config(
                Path(tmp) / "broker.yaml", port=port, token_url=idp.token_url, providers=1
            )
            broker = start_broker(config, port, Path(tmp) / "broker.log")
            try:
                wait_ready(broker.url, 30, path="/healthz")
                # The broker's first token request is now held at the gate (or about to be).
                for _ in range(500):
                    if idp.log():
                        break
                    await asyncio.sleep(0.02)
                cold = await phase(
                    "cold", broker.url, port, idp, args.callers, args.hold, "/token/p0", 0.0
                )
                rows.append(cold)
                # min_valid phase: wait until the token has less than min_valid left.
                min_valid = args.min_valid
                async with httpx.AsyncClient(base_url=broker.url, trust_env=False) as client:
                    while True:
                        status = (await client.get("/providers")).json()["providers"]["p0"]
                        if status["expires_in"] is not None and status["expires_in"] < min_valid:
                            break
                        await asyncio.sleep(0.25)
                path = f"/token/p0?min_valid={min_valid}"
                since = time.time()
                rows.append(
                    await phase(
                        "min_valid", broker.url, port, idp, args.callers, args.hold, path, since
                    )
                )
                problems = broker.problems()
            finally:
                exit_code = broker.close()
    finally:
        idp.close()
    return {"rows": rows, "broker_exit_code": exit_code, "broker_log_problems": problems[:10]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=0.5, help="minimum IdP hold, seconds")
    parser.add_argument(
        "--min-valid",
        type=int,
        default=50,
        help="min_valid of phase 2 (< the 60 s TTL; the phase waits until the token has less)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    rows = result["rows"]
    result |= {"machine": machine(), "all_met": all(r["met"] for r in rows)}
    cols = ["phase", "callers", "connected_before_idp_answered", "held_s", "idp_token_requests"]
    cols += ["ok_200", "other_statuses", "after_release_p50_s", "after_release_max_s", "met"]
    text = "\n".join(
        [
            f"single flight: {args.callers} concurrent GET /token/p0 while the IdP holds the"
            " token request (target: 1 IdP request, all 200)",
            table(rows, cols),
            f"overall: {verdict(result['all_met'])}",
            f"broker exit code {result['broker_exit_code']};"
            f" log warnings/errors: {result['broker_log_problems'] or 'none'}",
        ]
    )
    emit("single_flight", result, text, args.json)
    return 0 if result["all_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
