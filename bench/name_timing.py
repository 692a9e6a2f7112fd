"""Name timing: can a caller without a key tell an existing provider from a missing one by time?

    .venv/bin/python -m bench.name_timing [--rounds 20000] [--http-rounds 5000] [--json]

One broker (clients configured, so every caller needs a key; one warm provider ``known``
against the fake IdP on 127.0.0.1) answers ``GET /token/known`` and ``GET /token/missing``
without a key, both 401. Each round sends one of each, in random order, and records the
difference ``known - missing`` of the pair; reported are the median of those differences,
a bootstrap 95 % interval of that median, and each name's median.

Two ways in, the same app object:

* ``asgi``: the request handed straight to the broker's ASGI stack (the fast path in front
  of the FastAPI app), no sockets: the broker's own code, with the least noise; this is
  where a difference of a microsecond shows;
* ``http``: over a kept-alive connection to the same stack served by uvicorn: what a caller
  sees, network stack and event loop included (far noisier).

Target (``asgi``): the median difference within +-0.5 us and the 95 % interval containing
0 or lying inside +-0.5 us. Before the fast path authorized first, existing names answered
2-3 us slower. A timing test in the suite would be flaky on shared machines; this is a
bench for that reason.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.types import Message, Scope

from bench._common import emit, machine, table, verdict
from broker.config.load import parse_config
from broker.fakes.oauth2 import FakeOAuth2
from broker.fakes.server import serve_in_thread
from broker.web.app import create_app
from broker.web.fastpath import TokenFastPath

NAMES = ("known", "missing")
TARGET_US = 0.5
CLIENT_KEY = "bench-client-key-0123456789abcdef"  # a bench-only key


def settings_yaml(idp_url: str) -> str:
    return (
        f"clients:\n  bench:\n    key: {CLIENT_KEY}\n    providers: ['*']\n"
        "providers:\n  known:\n    type: oauth2\n"
        f"    token_url: '{idp_url}/oauth/token'\n"
        "    grant: client_credentials\n    client_id: app\n    client_secret: app-secret\n"
    )


def scope_for(name: str) -> Scope:
    """A plain, keyless ``GET /token/<name>`` as uvicorn would hand it over."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/token/{name}",
        "raw_path": f"/token/{name}".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8181"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8181),
        "state": {},
    }


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def discard(message: Message) -> None:
    if message["type"] == "http.response.start" and message["status"] != 401:
        raise SystemExit(f"expected 401, got {message['status']}: the setup is wrong")


def paired_rounds(timed: Callable[[str], float], rounds: int, rng: random.Random) -> list[float]:
    """``known - missing`` in seconds per round, each round's order drawn at random."""
    differences = []
    for _ in range(rounds):
        order = list(NAMES)
        rng.shuffle(order)
        took = {name: timed(name) for name in order}
        differences.append(took["known"] - took["missing"])
    return differences


def asgi_differences(fast: TokenFastPath, rounds: int, rng: random.Random) -> list[float]:
    """Paired rounds of requests handed straight to *fast*, in an event loop of their own."""
    loop = asyncio.new_event_loop()

    def timed(name: str) -> float:
        scope = scope_for(name)
        start = time.perf_counter()
        loop.run_until_complete(fast(scope, receive, discard))
        return time.perf_counter() - start

    try:
        paired_rounds(timed, 500, rng)  # warm up both paths
        return paired_rounds(timed, rounds, rng)
    finally:
        loop.close()


def http_differences(base_url: str, rounds: int, rng: random.Random) -> list[float]:
    with httpx.Client(base_url=base_url, timeout=10) as client:

        def timed(name: str) -> float:
            start = time.perf_counter()
            response = client.get(f"/token/{name}")
            took = time.perf_counter() - start
            if response.status_code != 401:
                raise SystemExit(f"expected 401, got {response.status_code}: {response.text}")
            return took

        for name in NAMES * 200:  # warm up the connection and both paths
            timed(name)
        return paired_rounds(timed, rounds, rng)


def median_interval(
    values: list[float], rng: random.Random, resamples: int = 1000
) -> tuple[float, float]:
    """A bootstrap 95 % interval of the median of *values*."""
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def summary(way: str, differences: list[float], rng: random.Random) -> dict[str, Any]:
    us = [d * 1e6 for d in differences]
    low, high = median_interval(us, rng)
    median = statistics.median(us)
    within = abs(median) <= TARGET_US and (low <= 0 <= high or max(-low, high) <= TARGET_US)
    return {
        "way": way,
        "rounds": len(us),
        "median_diff_us": median,
        "ci95_low_us": low,
        "ci95_high_us": high,
        "iqr_us": statistics.quantiles(us, n=4)[2] - statistics.quantiles(us, n=4)[0],
        "met": within,
    }


def measure(rounds: int, http_rounds: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    fake = FakeOAuth2(clients={"app": "app-secret"}, ttl=3600)
    rows = []
    with serve_in_thread(fake.app) as idp_url:
        fast = create_app(parse_config(settings_yaml(idp_url)))
        with serve_in_thread(fast, lifespan="on") as base_url:
            httpx.get(f"{base_url}/token/known", headers={"Authorization": f"Bearer {CLIENT_KEY}"})
            # The served app's lifespan made the manager; the direct calls share it (a keyless
            # request touches no state bound to the serving thread's event loop).
            rows.append(summary("asgi", asgi_differences(fast, rounds, rng), rng))
            if http_rounds:
                rows.append(summary("http", http_differences(base_url, http_rounds, rng), rng))
    return {"target_us": TARGET_US, "rows": rows, "met": rows[0]["met"]}


def report(result: dict[str, Any]) -> str:
    lines = [
        "GET /token/<name> without a key (401): existing minus missing name, paired rounds",
        f"target (asgi): median difference within +-{result['target_us']} us,"
        " and its 95 % interval containing 0 (or inside the same bound)",
        table(result["rows"]),
        "",
        f"overall: {verdict(result['met'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="asgi rounds (pairs)")
    parser.add_argument("--http-rounds", type=int, default=5_000, help="http rounds; 0: skip")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"machine": machine(), **measure(args.rounds, args.http_rounds, args.seed)}
    emit("name_timing", result, report(result), as_json=args.json)
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
