"""Serving: throughput and p50/p99 of ``GET /token/<provider>`` (warm token) vs a bare ASGI app.

    .venv/bin/python -m bench.serving [--seconds 5] [--conns 1,16,256] [--variants default,standard]
                                      [--ladder] [--guard-cost] [--profile-seconds 10] [--json]

Runs the broker as a real process (``python -m broker serve``) with one provider against the
fake IdP (``bench._idp``, token TTL 1 h, so no refresh happens during the run) and one client
with a key (caller authentication and every request check on; wrk sends the key to every
server, so all get the same request) and, under the
same uvicorn settings (the broker's own ``uvicorn_config``, so both behind the connection
guard of ``broker.server.connguard``; the broker's log line naming its cap is shown), a raw ASGI app
that answers the same bytes: the practical limit of the stack. With ``--ladder`` also a
one-route Starlette app and a one-route FastAPI app, which splits the gap into framework and
broker code. With ``--guard-cost`` also the raw app without the guard: ``guarded_rps_ratio``
and ``guarded_p99_ratio`` are what the guard itself costs (the broker ratio leaves it out).

``wrk --latency`` drives each server in turn (short runs, same connection count, targets
interleaved so drift on a noisy machine hits all of them alike). On 2+ CPUs the servers are
pinned to CPU 0 and wrk (one thread) to CPU 1, so server and load generator do not fight.

Variants: ``default`` is whatever the venv has (uvicorn picks uvloop/httptools only when they
import); ``standard`` adds uvloop + httptools from ``$BENCH_UVSTD`` (``run_all.sh`` installs
them there with ``pip --target``), which is what ``uvicorn[standard]`` would give. Which loop
and parser each server really uses is read from its ``/proc/<pid>/maps``.

Targets: broker/bare throughput >= 0.6 and broker/bare p99 <= 2.0 at every connection count.
With ``--profile-seconds N`` the broker is also sampled with py-spy under wrk load (16
connections) and the top inclusive/self costs are printed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    PYTHON,
    REPO,
    UVSTD_DIR,
    Broker,
    broker_config,
    emit,
    env_with,
    free_port,
    loaded_libraries,
    machine,
    pinned,
    profile_text,
    py_spy,
    ratio,
    start_broker,
    start_idp,
    stop,
    table,
    verdict,
    wait_ready,
)

TARGET_THROUGHPUT = 0.6
TARGET_P99 = 2.0
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


CLIENT_KEY = "bench-client-key-0123456789abcdef"  # a bench-only key
CLIENTS = ["clients:", "  bench:", f"    key: {{value: {CLIENT_KEY}}}", "    providers: [p0]"]
"""Caller authentication on, as the issue asks: wrk sends this client's key."""
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * UNITS[match.group(2)]


def run_wrk(url: str, conns: int, seconds: float, cpus: str | None, threads: int) -> WrkResult:
    cmd = ["wrk", "--latency", "-t", str(min(threads, conns)), "-c", str(conns)]
    cmd += ["-H", f"Authorization: Bearer {CLIENT_KEY}"]  # every server gets the same request
    cmd += ["-d", f"{seconds:g}s", "--timeout", "5s", url]
    out = subprocess.run(
        pinned(cmd, cpus), capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in sock.groups())
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non2xx.group(1))
    return WrkResult(rps, _ms(dist.get("50", "")), _ms(dist.get("99", "")), requests, errors)


def start_bare(
    kind: str, port: int, body_file: Path, cpus: str | None, extra: Path | None
) -> subprocess.Popen[bytes]:
    """A baseline server; kind ``unguarded`` is ``asgi`` without the connection guard."""
    cmd = [PYTHON, "-m", "bench._bare", "--port", str(port), "--body-file", str(body_file)]
    cmd += ["--kind", "asgi", "--unguarded"] if kind == "unguarded" else ["--kind", kind]
    return subprocess.Popen(
        pinned(cmd, cpus),
        cwd=REPO,
        env=env_with(extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stack_of(pid: int) -> dict[str, Any]:
    libs = loaded_libraries(pid, ["uvloop", "httptools", "_speedups"])
    return {"uvloop": libs["uvloop"], "httptools": libs["httptools"]}


def measure_variant(
    variant: str, extra: Path | None, args: argparse.Namespace, token_url: str, tmp: Path
) -> tuple[list[dict[str, Any]], dict[str, Any], Broker]:
    server_cpus = "0" if args.pin else None
    port = free_port()
    config = broker_config(
        tmp / f"broker-{variant}.yaml",
        port=port,
        token_url=token_url,
        providers=1,
        extra=CLIENTS,
    )
    broker = start_broker(
        config, port, tmp / f"broker-{variant}.log", cpus=server_cpus, extra_path=extra
    )
    bare: dict[str, subprocess.Popen[bytes]] = {}
    try:
        wait_ready(broker.url, 30)
        token_path = "/token/p0"  # noqa: S105  # a path
        body = httpx.get(broker.url + token_path, headers=AUTH, trust_env=False).content
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        urls = {"broker": broker.url + token_path}
        kinds = ["asgi", "starlette", "fastapi"] if args.ladder else ["asgi"]
        if args.guard_cost:
            kinds.append("unguarded")
        for kind in kinds:
            bport = free_port()
            bare[kind] = start_bare(kind, bport, body_file, server_cpus, extra)
            urls[kind] = f"http://127.0.0.1:{bport}{token_path}"
        for kind in kinds:
            wait_ready(urls[kind].rsplit("/token", 1)[0], 30, path=token_path)
        stacks = {"broker": stack_of(broker.pid)} | {k: stack_of(p.pid) for k, p in bare.items()}
        stacks["broker"]["guard"] = guard_line(broker)
        wrk_cpus = "1" if args.pin else None
        threads = 1 if args.pin else 2
        for url in urls.values():  # warm-up: first requests, lazy imports, CPU frequency
            run_wrk(url, 16, 1, wrk_cpus, threads)
        results: dict[tuple[str, int], list[WrkResult]] = {}
        names = list(urls)
        for conns in args.conns:
            for rep in range(args.repeat):
                order = names if rep % 2 == 0 else names[::-1]
                for name in order:
                    res = run_wrk(urls[name], conns, args.seconds, wrk_cpus, threads)
                    results.setdefault((name, conns), []).append(res)
        rows = []
        for conns in args.conns:
            med = {n: _median(results[(n, conns)]) for n in names}
            b, a = med["broker"], med["asgi"]
            row: dict[str, Any] = {
                "variant": variant,
                "conns": conns,
                "broker_rps": b.rps,
                "bare_rps": a.rps,
                "rps_ratio": ratio(b.rps, a.rps),
                "broker_p50_ms": b.p50_ms,
                "bare_p50_ms": a.p50_ms,
                "broker_p99_ms": b.p99_ms,
                "bare_p99_ms": a.p99_ms,
                "p99_ratio": ratio(b.p99_ms, a.p99_ms),
                "errors": sum(r.errors for n in names for r in results[(n, conns)]),
            }
            if args.ladder:
                row["starlette_rps"] = med["starlette"].rps
                row["fastapi_rps"] = med["fastapi"].rps
                row["starlette_ratio"] = ratio(med["starlette"].rps, a.rps)
                row["fastapi_ratio"] = ratio(med["fastapi"].rps, a.rps)
            if args.guard_cost:
                # The bare app behind the guard vs without it: what the guard itself costs.
                row["guarded_rps_ratio"] = ratio(a.rps, med["unguarded"].rps)
                row["guarded_p99_ratio"] = ratio(a.p99_ms, med["unguarded"].p99_ms)
            row["met"] = row["rps_ratio"] >= TARGET_THROUGHPUT and row["p99_ratio"] <= TARGET_P99
            rows.append(row)
        return rows, stacks, broker
    finally:
        for proc in bare.values():
            stop(proc)


def guard_line(broker: Broker) -> str | None:
    """The broker's start-up line about its connection guard (None: it has none)."""
    for line in broker.log_lines("INFO"):
        if "callers' connections: at most" in line:
            return line.split(" INFO broker ", 1)[-1]
    return None


def _median(results: list[WrkResult]) -> WrkResult:
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def profile(broker: Broker, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """py-spy the broker under wrk (16 connections); summarise collapsed stacks."""
    seconds = max(1, round(args.profile_seconds))
    raw = out_dir / "serving-profile.txt"
    with py_spy(broker.pid, seconds, raw) as summary:
        time.sleep(0.5)
        wrk_cpus = "1" if args.pin else None
        run_wrk(broker.url + "/token/p0", 16, seconds + 1, wrk_cpus, 1 if args.pin else 2)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--conns", default="1,16,256", help="connection counts")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point (median taken)")
    parser.add_argument("--variants", default="default,standard", help="default,standard")
    parser.add_argument(
        "--ladder", action="store_true", help="also Starlette and FastAPI baselines"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy the broker")
    parser.add_argument(
        "--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "broker-bench"
    )
    parser.add_argument(
        "--guard-cost",
        action="store_true",
        help="also run the bare app without the connection guard (guarded/unguarded ratios)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.conns = [int(c) for c in args.conns.split(",")]
    if args.pin and (machine()["nproc"] or 1) < 2:
        args.pin = False
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    variants: list[tuple[str, Path | None]] = []
    for name in args.variants.split(","):
        if name == "standard":
            if not (UVSTD_DIR / "uvloop").exists():
                print(f"# skipping variant standard: no uvloop/httptools in {UVSTD_DIR}")
                continue
            variants.append((name, UVSTD_DIR))
        else:
            variants.append((name, None))

    rows: list[dict[str, Any]] = []
    stacks: dict[str, Any] = {}
    prof: dict[str, Any] | None = None
    idp = start_idp(ttl=3600, clients=1, cpus="1" if args.pin else None)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            for variant, extra in variants:
                vrows, vstacks, broker = measure_variant(
                    variant, extra, args, idp.token_url, Path(tmpdir)
                )
                try:
                    rows += vrows
                    stacks[variant] = vstacks
                    if args.profile_seconds > 0 and variant == variants[0][0]:
                        prof = profile(broker, args, args.out_dir)
                finally:
                    code = broker.close()
                    stacks[variant]["broker_exit_code"] = code
                    problems = broker.problems()
                    stacks[variant]["broker_log_problems"] = problems[:10]
    finally:
        idp.close()

    result: dict[str, Any] = {
        "machine": machine(),
        "settings": {
            "seconds_per_run": args.seconds,
            "repeat": args.repeat,
            "pinned": args.pin,
            "targets": {"rps_ratio_min": TARGET_THROUGHPUT, "p99_ratio_max": TARGET_P99},
        },
        "stacks": stacks,
        "rows": rows,
        "all_met": all(r["met"] for r in rows),
        "profile": prof,
    }
    cols = ["variant", "conns", "broker_rps", "bare_rps", "rps_ratio", "broker_p50_ms"]
    cols += ["bare_p50_ms", "broker_p99_ms", "bare_p99_ms", "p99_ratio", "errors", "met"]
    if args.ladder:
        cols[5:5] = ["starlette_ratio", "fastapi_ratio"]
    lines = [
        "GET /token/<provider> (warm) vs bare ASGI app, same uvicorn settings, wrk --latency",
        f"targets: rps_ratio >= {TARGET_THROUGHPUT}, p99_ratio <= {TARGET_P99};"
        f" {args.seconds:g} s per run, pinned={args.pin}",
        table(rows, cols),
        "",
        "server stack (from /proc/<pid>/maps): "
        + "; ".join(
            f"{v}: uvloop={s['broker']['uvloop']} httptools={s['broker']['httptools']}"
            for v, s in stacks.items()
        ),
        *(f"{v}: {s['broker'].get('guard') or 'no connection guard'}" for v, s in stacks.items()),
        f"overall: {verdict(result['all_met'])}",
    ]
    for variant, s in stacks.items():
        if s.get("broker_log_problems"):
            lines.append(f"broker log ({variant}) warnings/errors: {s['broker_log_problems']}")
    if prof is not None:
        lines += ["", "the broker under wrk -c16:", *profile_text(prof)]
    emit("serving", result, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
