"""Startup: process start → ``/readyz`` 200 with 1 and 1,000 providers; idle RSS with 3.

    .venv/bin/python -m bench.startup [--providers 1,1000] [--repeat 3] [--idp-delay 0] [--json]

Each run spawns ``python -m broker serve`` against the fake IdP (``bench._idp``, answering at
once unless ``--idp-delay``) and polls every 10 ms for ``/healthz`` (the process serves) and
``/readyz`` (every provider holds a token). Baseline in the same run: uvicorn serving a bare
ASGI app without importing the broker (``bench._bare --plain``): spawn → first 200, the floor
set by the interpreter and uvicorn. Ratios: broker(1) / bare and broker(N) / broker(1).
Idle RSS: 3 providers, 3 s after ready, next to the bare app's.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench._common import (
    PYTHON,
    REPO,
    broker_config,
    emit,
    env_with,
    free_port,
    machine,
    poll_ready,
    ratio,
    readiness,
    rss_mb,
    start_broker,
    start_idp,
    stop,
    table,
)


def bare_start(tmp: Path) -> tuple[float, float]:
    """Spawn the bare app; (seconds to first 200, RSS MB 3 s later)."""
    body = tmp / "body.json"
    body.write_bytes(b'{"access_token": "x"}')
    port = free_port()
    cmd = [PYTHON, "-m", "bench._bare", "--port", str(port), "--body-file", str(body), "--plain"]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        ready = poll_ready(f"http://127.0.0.1:{port}", 30, path="/token/x")
        if ready is None:
            raise SystemExit("bare app did not start")
        time.sleep(3)
        return ready - started, rss_mb(proc.pid)
    finally:
        stop(proc)


def broker_start(
    n: int, token_url: str, tmp: Path, timeout: float, idle: float = 0.0
) -> dict[str, Any]:
    port = free_port()
    config = broker_config(tmp / f"start-{n}.yaml", port=port, token_url=token_url, providers=n)
    broker = start_broker(config, port, tmp / f"start-{n}.log")
    try:
        live = poll_ready(broker.url, timeout, path="/healthz")
        ready = poll_ready(broker.url, timeout) if live is not None else None
        out: dict[str, Any] = {
            "healthz_s": None if live is None else live - broker.started,
            "readyz_s": None if ready is None else ready - broker.started,
        }
        if ready is None:
            out["states"] = readiness(broker.url)
        if idle:
            time.sleep(idle)
        out["rss_mb"] = rss_mb(broker.pid)
        out["problems"] = broker.problems()[:3]
        return out
    finally:
        broker.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", default="1,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idp-delay", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="give up on /readyz after")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(x) for x in args.providers.split(",")]
    idp = start_idp(ttl=3600, clients=max(counts), delay=args.idp_delay)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            bare = [bare_start(tmp) for _ in range(args.repeat)]
            bare_s = median(b[0] for b in bare)
            rows.append({"server": "bare ASGI app", "providers": 0, "healthz_s": None})
            rows[-1] |= {"readyz_s": bare_s, "x_bare": 1.0, "runs": len(bare), "failed": 0}
            base: float | None = None
            for n in counts:
                runs = []
                for _ in range(args.repeat):
                    runs.append(broker_start(n, idp.token_url, tmp, args.timeout))
                    if runs[-1]["readyz_s"] is None:
                        break  # one run that never gets ready is enough to say so
                done = [r for r in runs if r["readyz_s"] is not None]
                ready_s = median(r["readyz_s"] for r in done) if done else None
                live = [r["healthz_s"] for r in runs if r["healthz_s"] is not None]
                if base is None and ready_s is not None:
                    base = ready_s
                rows.append(
                    {
                        "server": "broker",
                        "providers": n,
                        "healthz_s": median(live) if live else None,
                        "readyz_s": ready_s,
                        "x_bare": ratio(ready_s, bare_s) if ready_s else None,
                        "x_first": ratio(ready_s, base) if ready_s and base else None,
                        "runs": len(runs),
                        "failed": len(runs) - len(done),
                        "detail": [r.get("states") for r in runs if "states" in r][:1] or None,
                    }
                )
            idle = broker_start(3, idp.token_url, tmp, args.timeout, idle=3.0)
            bare_rss = median(b[1] for b in bare)
    finally:
        idp.close()
    result = {
        "machine": machine(),
        "settings": vars(args),
        "rows": rows,
        "idle_rss_mb_3_providers": idle["rss_mb"],
        "bare_rss_mb": bare_rss,
        "rss_x_bare": ratio(idle["rss_mb"], bare_rss),
    }
    cols = ["server", "providers", "healthz_s", "readyz_s", "x_bare", "x_first", "runs", "failed"]
    lines = [
        f"startup: spawn -> /readyz 200 (median of {args.repeat}; IdP answers in"
        f" {args.idp_delay * 1000:g} ms)",
        table(rows, cols),
        f"idle RSS, 3 providers: {idle['rss_mb']:.1f} MB (bare app {bare_rss:.1f} MB,"
        f" x{result['rss_x_bare']:.2f})",
    ]
    lines += [f"{r['providers']} providers: {r['detail']}" for r in rows if r.get("detail")]
    emit("startup", result, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
