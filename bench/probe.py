"""Probe cost: what one health check costs the host, ``broker health`` vs the image's old probe.

    .venv/bin/python -m bench.probe [--runs 30] [--json]

A container's HEALTHCHECK (every 10 s) and a Kubernetes exec probe start a process each time,
so its start-up is the cost. Against one broker (1 provider at the fake IdP ``bench._idp``),
alternating, *runs* times each:

* ``broker health``: the image's HEALTHCHECK (the standard library only; the broker's URL
  from the address file it wrote, ``BROKER_ADDRESS_FILE``);
* baseline: the image's probe before issue 15, ``python -c "...urllib.request.urlopen(...)"``
  with the port written into it;
* ``broker health --ready``, and ``broker check`` (which loads the whole config stack) to show
  what a probe that read the config would cost.

Per command: wall time (median, p90), CPU time (user + system, from the children's
rusage) and peak RSS, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import resource
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
    percentile,
    ratio,
    start_idp,
    stop,
    table,
    wait_ready,
)

BROKER = str(Path(PYTHON).parent / "broker")


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """One run of *cmd*: (wall s, CPU s, exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.returncode


def peak_rss(cmd: list[str], env: dict[str, str]) -> float:
    """Peak RSS (MB) of one run of *cmd*, in a fresh parent of its own (the children's
    ru_maxrss is the largest child's so far, not the last one's)."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True);"
        " print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [PYTHON, "-c", probe, *cmd], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    idp = start_idp(ttl=3600)
    broker: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            port = free_port()
            address = tmp / "address.json"
            config = broker_config(
                tmp / "config.yaml",
                port=port,
                token_url=idp.token_url,
                providers=1,
                log_level="warning",
            )
            env = env_with(BROKER_ADDRESS_FILE=str(address))
            broker = subprocess.Popen(
                [PYTHON, "-m", "broker", "serve", "--config", str(config)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_ready(f"http://127.0.0.1:{port}", timeout=30)
            url = f"http://127.0.0.1:{port}/healthz"
            commands = {
                "python -c urllib (baseline)": [
                    PYTHON,
                    "-c",
                    "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen("
                    f"'{url}', timeout=2).status == 200 else 1)",
                ],
                "broker health": [BROKER, "health"],
                "broker health --ready": [BROKER, "health", "--ready"],
                "broker check (config stack)": [BROKER, "check", "--config", str(config)],
            }
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
            failures: dict[str, int] = dict.fromkeys(commands, 0)
            for _ in range(args.runs):
                for name, cmd in commands.items():  # alternating, so drift hits all alike
                    wall, cpu, status = measure(cmd, env)
                    samples[name].append((wall, cpu))
                    failures[name] += status != 0
            rows: list[dict[str, Any]] = []
            base_wall = median(w for w, _ in samples["python -c urllib (baseline)"])
            base_cpu = median(c for _, c in samples["python -c urllib (baseline)"])
            for name, cmd in commands.items():
                walls = [w for w, _ in samples[name]]
                cpus = [c for _, c in samples[name]]
                rows.append(
                    {
                        "command": name,
                        "wall_ms": median(walls) * 1000,
                        "wall_p90_ms": percentile(walls, 90) * 1000,
                        "cpu_ms": median(cpus) * 1000,
                        "rss_mb": peak_rss(cmd, env),
                        "x_wall": ratio(median(walls), base_wall),
                        "x_cpu": ratio(median(cpus), base_cpu),
                        "failed": failures[name],
                    }
                )
    finally:
        if broker is not None:
            stop(broker)
        stop(idp.proc)
    result = {"machine": machine(), "runs": args.runs, "rows": rows}
    emit("probe", result, table(rows), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
