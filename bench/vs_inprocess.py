"""Broker vs the usual alternative: every worker fetching its own token in-process (authlib).

    .venv/bin/python -m bench.vs_inprocess [--idp-delay 0.075] [--workers 50] [--window 60]
                                           [--json]

The identity provider is the fake (``bench._idp``) with a realistic answer time added to its
token endpoint (``--idp-delay``, 75 ms by default; a real IdP over the network with TLS takes
50-300 ms); its ``/me`` API answers without delay.

(a) time to the first authorized request of a new worker process (``bench._worker``):
    broker (warm): one local ``GET /token/<provider>``, then ``GET /me`` with the token;
    in-process: ``authlib.integrations.httpx_client.OAuth2Client.fetch_token``
    (client_credentials) at the IdP, then ``GET /me``. Reported from the worker's ``main``
    (imports done) and from process spawn; medians of ``--spawns`` workers each.

(b) identity-provider token requests per hour for ``--workers`` workers calling the API
    every ``--call-every`` s: one broker provider shared by all vs ``AsyncOAuth2Client`` per
    worker (authlib renews a client_credentials token once it is within ``leeway`` of
    expiry). A 1 h token (``--real-ttl``) is modelled by a ``--short-ttl`` token with every
    time constant scaled by short/real: authlib's leeway 60 s → 60*short/real, the broker's
    refresh margin set to 0 (at 1 h the 60 s margin never binds; at 20 s it would). Counted
    over ``--window`` s after one lifetime of warm-up, then scaled:

        per_hour = count / window_s x short_ttl / real_ttl x 3600

    (requests per token lifetime are invariant when all time constants scale together).
    Worker restarts are not modelled: each one costs the in-process design one more token
    request, the broker none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import httpx
from authlib.integrations.httpx_client import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    AsyncOAuth2Client,
)

from bench._common import (
    PYTHON,
    REPO,
    Idp,
    broker_config,
    emit,
    env_with,
    free_port,
    machine,
    ratio,
    start_broker,
    start_idp,
    table,
    wait_ready,
)


def spawn(mode: str, argv: list[str]) -> dict[str, float]:
    started = time.monotonic()
    out = subprocess.run(
        [PYTHON, "-m", "bench._worker", mode, *argv],
        cwd=REPO,
        env=env_with(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    stamps: dict[str, float] = json.loads(out)
    return {
        "from_main_ms": (stamps["done"] - stamps["main"]) * 1000,
        "token_ms": (stamps["token"] - stamps["main"]) * 1000,
        "from_spawn_ms": (stamps["done"] - started) * 1000,
    }


def first_request(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    idp = start_idp(ttl=3600, clients=1, delay=args.idp_delay)
    port = free_port()
    config = broker_config(tmp / "a.yaml", port=port, token_url=idp.token_url, providers=1)
    broker = start_broker(config, port, tmp / "a.log")
    try:
        wait_ready(broker.url, 30)
        api = idp.url + "/me"
        argv = {
            "broker": [broker.url, "p0", api],
            "in-process": [idp.token_url, "bench", "bench-secret", api],
        }
        runs: dict[str, list[dict[str, float]]] = {"broker": [], "in-process": []}
        for _ in range(args.spawns):  # interleaved, so drift hits both alike
            runs["broker"].append(spawn("broker", argv["broker"]))
            runs["in-process"].append(spawn("authlib", argv["in-process"]))
    finally:
        broker.close()
        idp.close()
    keys = ("token_ms", "from_main_ms", "from_spawn_ms")
    rows: list[dict[str, Any]] = [
        {"design": name, **{key: median(r[key] for r in values) for key in keys}}
        for name, values in runs.items()
    ]
    for row in rows:
        row["x_broker_from_main"] = ratio(row["from_main_ms"], rows[0]["from_main_ms"])
        row["x_broker_from_spawn"] = ratio(row["from_spawn_ms"], rows[0]["from_spawn_ms"])
    return rows


async def worker_broker(url: str, api: str, until: float, every: float) -> None:
    async with httpx.AsyncClient(trust_env=False) as client:
        while time.time() < until:
            token = (await client.get(url)).json()["access_token"]
            await client.get(api, headers={"Authorization": f"Bearer {token}"})
            await asyncio.sleep(every)


async def worker_authlib(
    idp: Idp, client_id: str, api: str, until: float, every: float, leeway: float
) -> None:
    async with AsyncOAuth2Client(
        client_id,
        "s",
        token_endpoint=idp.token_url,
        grant_type="client_credentials",
        leeway=leeway,
        trust_env=False,
    ) as client:
        await client.fetch_token(grant_type="client_credentials")
        while time.time() < until:
            (await client.get(api)).raise_for_status()
            await asyncio.sleep(every)


async def per_hour(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    idp = start_idp(ttl=args.short_ttl, clients=args.workers + 1, delay=args.idp_delay)
    port = free_port()
    config = broker_config(
        tmp / "b.yaml",
        port=port,
        token_url=idp.token_url,
        providers=1,
        extra=["refresh: {margin: 0}"],
    )
    broker = start_broker(config, port, tmp / "b.log")
    scale = args.short_ttl / args.real_ttl
    leeway = 60 * scale
    try:
        wait_ready(broker.url, 30)
        begin = time.time()
        warm_until = begin + args.short_ttl
        until = warm_until + args.window
        api = idp.url + "/me"
        tasks = [
            worker_broker(f"{broker.url}/token/p0", api, until, args.call_every)
            for _ in range(args.workers)
        ]
        tasks += [
            worker_authlib(idp, f"c{i + 1}", api, until, args.call_every, leeway)
            for i in range(args.workers)
        ]
        await asyncio.gather(*tasks)
        log = idp.log(warm_until)
        problems = broker.problems()
    finally:
        broker.close()
        idp.close()
    window = [entry for entry in log if entry[0] < until]
    counts = {
        "broker": sum(1 for _, c, _ in window if c == "c0"),
        "in-process": sum(1 for _, c, _ in window if c != "c0"),
    }
    factor = scale * 3600 / args.window
    expected = {
        "broker": 3600 / (2 / 3 * args.real_ttl),
        "in-process": args.workers * 3600 / (args.real_ttl - 60),
    }
    rows = [
        {
            "design": name,
            "workers": args.workers,
            "idp_requests_in_window": count,
            "per_hour_at_real_ttl": count * factor,
            "expected_per_hour": expected[name],
        }
        for name, count in counts.items()
    ]
    for row in rows:
        row["x_broker"] = ratio(row["per_hour_at_real_ttl"], rows[0]["per_hour_at_real_ttl"])
    return {"rows": rows, "factor": factor, "leeway_s": leeway, "broker_log_problems": problems[:5]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idp-delay", type=float, default=0.075, help="IdP token answer time, s")
    parser.add_argument("--spawns", type=int, default=5, help="worker processes per design (a)")
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--call-every", type=float, default=0.5, help="API call interval, s")
    parser.add_argument("--short-ttl", type=float, default=20.0)
    parser.add_argument("--real-ttl", type=float, default=3600.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        first = first_request(args, tmp)
        hourly = asyncio.run(per_hour(args, tmp))
    result = {
        "machine": machine(),
        "settings": vars(args),
        "first_request": first,
        "per_hour": hourly,
    }
    text = "\n".join(
        [
            f"(a) new worker -> first authorized API request (IdP token endpoint answers in"
            f" {args.idp_delay * 1000:g} ms; median of {args.spawns})",
            table(first),
            "",
            f"(b) IdP token requests per hour, {args.workers} workers, {args.real_ttl:g} s tokens"
            f" (modelled with {args.short_ttl:g} s tokens over {args.window:g} s;"
            f" per_hour = count / {args.window:g} s x {args.short_ttl:g}/{args.real_ttl:g} x 3600"
            f" = count x {hourly['factor']:.4g}; authlib leeway {hourly['leeway_s']:.3g} s)",
            table(hourly["rows"]),
        ]
    )
    emit("vs_inprocess", result, text, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
