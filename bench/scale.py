"""Scale: 10 → 10,000 providers with 60 s tokens: CPU, memory, refresh punctuality, expiry.

    .venv/bin/python -m bench.scale [--providers 10,100,1000,10000] [--ttl 60] [--stage 0]
                                    [--ready-timeout 60] [--json]

One fake IdP process (``bench._idp``, client_credentials, one client id per provider so its
log says which provider asked) serves every run; per provider count a fresh broker process
(``python -m broker serve``, log level info, log to a file) is started and, once ready:

* punctuality: ``GET /providers`` gives each provider's ``next_refresh_in`` (0.1 s
  resolution) relative to the moment of the call; the first token request of that client at
  the fake afterwards is the refresh. Lateness = arrival - scheduled time (p50/p99/max;
  negative = early, within the ±0.05 s rounding). The run lasts until the last scheduled
  refresh + 3 s (the first refresh round, ~2/3 of 60 s ± 10 %);
* CPU from ``/proc/<pid>/stat`` (utime+stime) over an idle window (no refreshes) and over
  the refresh window; solved for idle CPU/s and CPU per refresh, then projected to steady
  state: idle + per_refresh x N / (2/3 x TTL). Both windows include the sampling load;
* memory: VmRSS at the end and VmHWM (peak);
* zero expired tokens: ``--sample-rate`` GETs/s of random providers all along; each token is
  checked against the fake's own expiry (``access_token_expires_at``) at the time it was asked
  for; a token the fake never issued counts as bad too.

If the broker is not ready within ``--ready-timeout`` seconds the row says so, with what the
broker was doing (provider states, CPU, IdP requests). ``--stage B`` loads providers in
batches of B through SIGHUP reloads (each batch ready before the next): a way to measure the
steady state past a startup that does not converge. Targets: steady CPU well under one core
(< 50 %), RSS < 250 MB, p99 lateness < 250 ms, 0 expired.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    Broker,
    Idp,
    broker_config,
    cpu_seconds,
    emit,
    free_port,
    machine,
    percentile,
    poll_ready,
    ratio,
    readiness,
    start_broker,
    start_idp,
    status_kb,
    table,
    verdict,
)
from bench._load import open_loop

TARGET_CPU_PCT = 50.0
TARGET_RSS_MB = 250.0
TARGET_LATE_P99_MS = 250.0


def load_staged(
    broker: Broker, config: Path, n: int, batch: int, token_url: str, port: int, timeout: float
) -> float | None:
    """Grow the config by *batch* providers per SIGHUP; the time all were ready, or None."""
    loaded = batch
    while loaded < n:
        loaded = min(n, loaded + batch)
        broker_config(config, port=port, token_url=token_url, providers=loaded)
        broker.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            states = readiness(broker.url)
            if isinstance(states, dict) and states.get("ready", 0) == loaded:
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
    return time.monotonic()


def solve_cpu(w1: float, c1: float, r1: int, w2: float, c2: float, r2: int) -> tuple[float, float]:
    """CPU = a·seconds + b·refreshes over two windows → (a CPU-s per s, b CPU-s per refresh)."""
    det = w1 * r2 - w2 * r1
    if r1 == 0 or abs(det) < 1e-9:
        a = c1 / w1
        return a, (c2 - a * w2) / r2 if r2 else float("nan")
    return (c1 * r2 - c2 * r1) / det, (w1 * c2 - w2 * c1) / det


async def measure(n: int, idp: Idp, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"providers": n}
    port = free_port()
    first = args.stage if 0 < args.stage < n else n
    config = broker_config(
        tmp / f"scale-{n}.yaml", port=port, token_url=idp.token_url, providers=first
    )
    pin = "0" if args.pin else None
    broker = start_broker(config, port, tmp / f"scale-{n}.log", cpus=pin)
    try:
        ready = poll_ready(broker.url, args.ready_timeout, poll=0.05)
        if ready is not None and first < n:
            ready = load_staged(
                broker, config, n, args.stage, idp.token_url, port, args.ready_timeout
            )
            row["staged"] = f"{args.stage}/batch"
        if ready is None:
            row |= {
                "ready_s": None,
                "ok": False,
                "not_ready": {
                    "after_s": args.ready_timeout,
                    "states": readiness(broker.url),
                    "broker_cpu_s": cpu_seconds(broker.pid),
                    "idp_token_requests": len(idp.log(time.time() - args.ready_timeout - 30)),
                },
                "rss_mb": status_kb(broker.pid, "VmRSS") / 1024,
                "log_problems": len(broker.problems()),
                "first_problem": (broker.problems() or [""])[0][:300],
            }
            return row
        row["ready_s"] = ready - broker.started
        return row | await steady(n, broker, idp, args, port)
    finally:
        code = broker.close()
        row["exit_code"] = code


async def steady(
    n: int, broker: Broker, idp: Idp, args: argparse.Namespace, port: int
) -> dict[str, Any]:
    # next_refresh_in has 0.1 s resolution: average the estimate over a few snapshots taken
    # at odd offsets. The client is warmed first (httpx's first request imports lazily).
    estimates: dict[str, list[float]] = {}
    async with httpx.AsyncClient(base_url=broker.url, timeout=60, trust_env=False) as client:
        await client.get("/healthz")
        snap_wall = time.time()
        for _ in range(args.snapshots):
            await asyncio.sleep(0.137)
            sent = time.time()
            providers = (await client.get("/providers")).json()["providers"]
            for name, p in providers.items():
                if p["next_refresh_in"] is not None:
                    estimates.setdefault(name, []).append(sent + p["next_refresh_in"])
    scheduled = {name: sum(v) / len(v) for name, v in estimates.items()}
    names = list(providers)
    rng = random.Random(n)
    last = max(scheduled.values())
    t_idle0 = time.time()
    seconds = min(last + 3 - t_idle0, args.max_window)
    load_task = asyncio.create_task(
        open_loop(
            "127.0.0.1",
            port,
            lambda: f"/token/{rng.choice(names)}",
            rate=args.sample_rate,
            conns=2,
            seconds=seconds,
            keep_body=True,
        )
    )
    cpu_a = cpu_seconds(broker.pid)
    await asyncio.sleep(args.idle_window)
    t_idle1, cpu_b = time.time(), cpu_seconds(broker.pid)
    load = await load_task
    t_end, cpu_c = time.time(), cpu_seconds(broker.pid)
    rss = status_kb(broker.pid, "VmRSS") / 1024
    hwm = status_kb(broker.pid, "VmHWM") / 1024
    problems = broker.problems()

    log = idp.log(snap_wall)
    first_at: dict[str, float] = {}
    for at, client_id, _ in log:
        name = "p" + client_id[1:]
        if name in scheduled and name not in first_at:
            first_at[name] = at
    late = [(first_at[p] - scheduled[p]) * 1000 for p in scheduled if p in first_at]
    due = [p for p in scheduled if scheduled[p] < t_end - 1]
    missed = [p for p in due if p not in first_at]
    r1 = sum(1 for at, _, _ in log if t_idle0 <= at < t_idle1)
    r2 = sum(1 for at, _, _ in log if t_idle1 <= at < t_end)
    w1, w2 = t_idle1 - t_idle0, t_end - t_idle1
    a, b = solve_cpu(w1, cpu_b - cpu_a, r1, w2, cpu_c - cpu_b, r2)
    steady_pct = 100 * (a + b * n / (2 / 3 * args.ttl))

    samples = [s for s in load.samples if s.status == 200]
    tokens = [json.loads(s.body)["access_token"] for s in samples]
    expiries = idp.expiries(tokens)
    expired = sum(
        1 for s, e in zip(samples, expiries, strict=True) if e is not None and e <= s.intended
    )
    unknown = sum(1 for e in expiries if e is None)
    non200 = len(load.samples) - len(samples) + load.errors
    row: dict[str, Any] = {
        "idle_cpu_pct": 100 * (cpu_b - cpu_a) / w1,
        "window_cpu_pct": 100 * (cpu_c - cpu_b) / w2,
        "window_s": w2,
        "refreshes_in_window": r2,
        "cpu_ms_per_refresh": 1000 * b,
        "steady_cpu_pct": steady_pct,
        "rss_mb": rss,
        "hwm_mb": hwm,
        "late_p50_ms": percentile(late, 50),
        "late_p99_ms": percentile(late, 99),
        "late_max_ms": max(late, default=float("nan")),
        "early_over_100ms": sum(1 for x in late if x < -100),
        "refreshed": f"{len(late)}/{len(scheduled)}",
        "missed_refreshes": len(missed),
        "sampled_gets": len(load.samples),
        "non_200": non200,
        "expired_served": expired,
        "unknown_tokens": unknown,
        "log_problems": len(problems),
        "first_problem": (problems or [""])[0][:300],
    }
    row["ok"] = (
        steady_pct < TARGET_CPU_PCT
        and rss < TARGET_RSS_MB
        and row["late_p99_ms"] < TARGET_LATE_P99_MS
        and expired == 0
        and unknown == 0
        and non200 == 0
        and not missed
    )
    return row


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    idp = start_idp(ttl=args.ttl, clients=max(args.providers), cpus="1" if args.pin else None)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.providers:
                row = await measure(n, idp, args, Path(tmp))
                rows.append(row)
                if not args.json:
                    print(f"# {n} providers: {'ok' if row['ok'] else 'NOT ok'}", flush=True)
    finally:
        idp.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default="10,100,1000,10000")
    parser.add_argument("--ttl", type=float, default=60.0)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--stage", type=int, default=0, help="load in SIGHUP batches of this size")
    parser.add_argument(
        "--idle-window", type=float, default=8.0, help="CPU window before refreshes"
    )
    parser.add_argument("--max-window", type=float, default=120.0, help="cap on the measured run")
    parser.add_argument("--snapshots", type=int, default=3, help="GET /providers snapshots")
    parser.add_argument("--sample-rate", type=float, default=20.0, help="sampled GETs per second")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.providers = [int(x) for x in args.providers.split(",")]
    if (machine()["nproc"] or 1) < 2:
        args.pin = False
    rows = asyncio.run(run(args))
    base = next((r for r in rows if r.get("ready_s") is not None), None)
    growth = []
    for r in rows:
        if base is None or r.get("steady_cpu_pct") is None:
            continue
        growth.append(
            {
                "providers": f"{base['providers']} -> {r['providers']}",
                "x_providers": r["providers"] / base["providers"],
                "x_rss": ratio(r["rss_mb"], base["rss_mb"]),
                "x_steady_cpu": ratio(r["steady_cpu_pct"], base["steady_cpu_pct"]),
                "x_late_p99": ratio(r["late_p99_ms"], base["late_p99_ms"]),
                "x_ready_s": ratio(r["ready_s"], base["ready_s"]),
            }
        )
    result: dict[str, Any] = {"machine": machine(), "settings": vars(args), "rows": rows}
    result["growth"] = growth
    result["all_met"] = all(r["ok"] for r in rows)
    cols = ["providers", "ready_s", "idle_cpu_pct", "window_cpu_pct", "cpu_ms_per_refresh"]
    cols += ["steady_cpu_pct", "rss_mb", "hwm_mb", "late_p50_ms", "late_p99_ms", "late_max_ms"]
    cols += ["refreshed", "sampled_gets", "non_200", "expired_served", "log_problems", "ok"]
    lines = [
        f"scale: providers with {args.ttl:g} s tokens, one fake IdP; targets: steady CPU <"
        f" {TARGET_CPU_PCT:g}% of a core, RSS < {TARGET_RSS_MB:g} MB, p99 lateness <"
        f" {TARGET_LATE_P99_MS:g} ms, 0 expired",
        table(rows, cols),
    ]
    for r in rows:
        if "not_ready" in r:
            lines.append(f"{r['providers']} providers NOT READY: {r['not_ready']}")
        if r.get("first_problem"):
            lines.append(f"{r['providers']} providers, first log problem: {r['first_problem']}")
    if growth:
        lines += ["growth:", table(growth)]
    lines.append(f"overall: {verdict(result['all_met'])}")
    emit("scale", result, "\n".join(lines), args.json)
    return 0 if result["all_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
