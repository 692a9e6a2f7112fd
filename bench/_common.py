"""Shared plumbing for the bench scripts: processes, /proc readings, percentiles, reports.

Every bench starts its own fake identity provider (``bench._idp``) and broker as separate
processes on 127.0.0.1, bounds everything in time, and stops what it started by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
UVSTD_DIR = Path(os.environ.get("BENCH_UVSTD", Path(tempfile.gettempdir()) / "broker-bench-uvstd"))
"""Where ``run_all.sh`` installs uvloop + httptools (pip --target) for the ``standard`` variant,
so the shared venv keeps the project's default (pure-asyncio + h11) stack."""


# -- /proc -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (all threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status such as VmRSS or VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def loaded_libraries(pid: int, needles: Sequence[str]) -> dict[str, bool]:
    """Which of *needles* appear in the process's memory map (e.g. uvloop's .so)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {needle: needle in maps for needle in needles}


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import fastapi
    import starlette
    import uvicorn

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                [shutil.which("git") or "/usr/bin/git", *argv],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "broker_files_changed_since_commit": len(
            git("status", "--porcelain", "broker").splitlines()
        ),
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
        "starlette": starlette.__version__,
        "httpx": httpx.__version__,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """Prefix *cmd* with ``taskset -c cpus`` when asked (and taskset exists)."""
    if cpus is None or not Path("/usr/bin/taskset").exists():
        return cmd
    return ["taskset", "-c", cpus, *cmd]


def env_with(extra_path: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    """SIGTERM the process we started, then SIGKILL it if it lingers; returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=timeout)


@dataclass(frozen=True)
class Answer:
    """One token answer of the fake IdP, as it recorded it once written to the socket."""

    monotonic: float
    wall: float
    status: int
    access_token: str | None
    grant: str


@dataclass
class Idp:
    """A fake OAuth2 identity provider process (``python -m bench._idp``)."""

    proc: subprocess.Popen[str]
    url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=60, trust_env=False)

    @property
    def token_url(self) -> str:
        return self.url + "/oauth/token"

    def log(self, since: float = 0.0) -> list[tuple[float, str, str]]:
        """Token requests as (arrival wall time, client_id, grant_type), oldest first."""
        body = self.client.get("/_bench/log", params={"since": since}).json()
        return [(float(a), str(c), str(g)) for a, c, g in body["requests"]]

    def answers(self, start: int = 0) -> list[Answer]:
        """Token answers from the *start*-th on; CLOCK_MONOTONIC is one clock for the
        whole host."""
        body = self.client.get("/_bench/answers", params={"from": start}).json()
        return [
            Answer(float(m), float(w), int(s), None if a is None else str(a), str(g))
            for m, w, s, a, g in body["answers"]
        ]

    def set(self, **values: float | bool) -> None:
        """Change the fake at run time: delay (s), ttl (s), gate (open: bool)."""
        self.client.post("/_bench/set", json=values).raise_for_status()

    def expiries(self, tokens: Sequence[str]) -> list[float | None]:
        """The fake's expiry (wall time) of each access token; None if it never issued it."""
        out: list[float | None] = []
        for start in range(0, len(tokens), 5000):
            chunk = list(tokens[start : start + 5000])
            body = self.client.post("/_bench/expiries", json=chunk).json()
            out.extend(None if e is None else float(e) for e in body)
        return out

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


def start_idp(
    *,
    ttl: float,
    clients: int = 1,
    delay: float = 0.0,
    gated: bool = False,
    reuse_detection: bool = False,
    cpus: str | None = None,
) -> Idp:
    cmd = [PYTHON, "-m", "bench._idp", "--ttl", str(ttl), "--clients", str(clients)]
    cmd += ["--delay", str(delay)] + (["--gated"] if gated else [])
    cmd += ["--reuse-detection"] if reuse_detection else []
    proc = subprocess.Popen(
        pinned(cmd, cpus), cwd=REPO, env=env_with(), stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().strip() if proc.stdout is not None else ""
    if not line.startswith("READY "):
        stop(proc)
        raise SystemExit(f"fake IdP did not start: {line!r}")
    return Idp(proc, line.split()[1])


def provider_yaml(name: str, token_url: str, client_id: str, secret: str = "s") -> list[str]:  # noqa: S107
    return [
        f"  {name}:",
        "    type: oauth2",
        f"    token_url: {token_url}",
        "    grant: client_credentials",
        f"    client_id: {client_id}",
        f"    client_secret: {secret}",
        "    client_auth: client_secret_post",
    ]


def broker_config(
    path: Path,
    *,
    port: int,
    token_url: str,
    providers: int,
    log_level: str = "info",
    extra: Sequence[str] = (),
) -> Path:
    """Write a config with providers p0..p{n-1}, each its own client c<i> at the fake."""
    lines = [f"port: {port}", f"log_level: {log_level}", *extra, "providers:"]
    for i in range(providers):
        lines += provider_yaml(f"p{i}", token_url, f"c{i}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # inline (fake) secrets: the broker warns about group/world-readable files
    return path


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    url: str
    started: float
    """time.monotonic() just before the process was spawned."""
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_lines(self, *levels: str) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if any(f" {lv} " in line for lv in levels)]

    def problems(self) -> list[str]:
        """WARNING and worse log lines, minus the expected no-state_dir notice."""
        lines = self.log_lines("WARNING", "ERROR", "CRITICAL")
        return [line for line in lines if "no state_dir configured" not in line]

    def close(self) -> int | None:
        return stop(self.proc)


def start_broker(
    config: Path,
    port: int,
    log_path: Path,
    *,
    cpus: str | None = None,
    extra_path: Path | None = None,
    wrapper: Sequence[str] = (),
) -> Broker:
    """``python -m broker serve --config ...`` as a separate process, stderr to *log_path*."""
    cmd = [*wrapper, PYTHON, "-m", "broker", "serve", "--config", str(config)]
    log = log_path.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        pinned(cmd, cpus),
        cwd=REPO,
        env=env_with(extra_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return Broker(proc, f"http://127.0.0.1:{port}", started, log_path)


def poll_ready(url: str, timeout: float, path: str = "/readyz", poll: float = 0.01) -> float | None:
    """Poll *path* until 200; time.monotonic() of the first 200, or None after *timeout* s."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5, trust_env=False) as client:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get(url + path).status_code == 200:
                    return time.monotonic()
            if time.monotonic() > deadline:
                return None
            time.sleep(poll)


def wait_ready(url: str, timeout: float, path: str = "/readyz", poll: float = 0.01) -> float:
    """Like :func:`poll_ready`, but a timeout ends the bench."""
    ready = poll_ready(url, timeout, path, poll)
    if ready is None:
        raise SystemExit(f"{url}{path} not 200 within {timeout:g} s")
    return ready


def readiness(url: str, timeout: float = 10) -> dict[str, int] | str:
    """Provider states from /readyz (counted), or why they could not be read."""
    try:
        body = httpx.get(url + "/readyz", timeout=timeout, trust_env=False).json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"/readyz unanswered: {type(exc).__name__}"
    states: dict[str, int] = {}
    for entry in body["providers"].values():
        states[entry["state"]] = states.get(entry["state"], 0) + 1
    return states


# -- profiling -------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(pid: int, seconds: int, raw: Path) -> Iterator[dict[str, Any]]:
    """Sample *pid* with py-spy (200 Hz, collapsed stacks to *raw*) while the block runs.

    The yielded dict is filled with :func:`summarise`'s result (or ``error``) on exit.
    """
    exe = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    cmd = [exe, "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
    cmd += ["--duration", str(seconds), "--output", str(raw)]
    raw.unlink(missing_ok=True)
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summary: dict[str, Any] = {}
    try:
        yield summary
    finally:
        _, err = spy.communicate(timeout=seconds + 60)
        if raw.exists():
            summary.update(summarise(raw), raw_file=str(raw))
        else:
            summary["error"] = err.strip().splitlines()[:3]


def _frame_name(frame: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)"
    match = re.match(r"(.+?) \((.+?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    path = match.group(2)
    short = "/".join(path.split("/")[-2:])
    return f"{match.group(1)} ({short})"


def summarise(raw: Path, top: int = 25) -> dict[str, Any]:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if "(" in f]  # drop process/thread pseudo-frames
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        self_time[frames[-1]] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"share_pct": 100 * c / total, "function": n} for n, c in counter.most_common(top)]

    return {"samples": total, "inclusive": share(inclusive), "self": share(self_time)}


def profile_text(summary: Mapping[str, Any], inclusive: int = 20, own: int = 15) -> list[str]:
    if "error" in summary:
        return [f"py-spy failed: {summary['error']}"]
    return [
        f"py-spy profile ({summary['samples']} samples), top inclusive:",
        table(summary["inclusive"][:inclusive]),
        "top self:",
        table(summary["self"][:own]),
        f"raw collapsed stacks: {summary['raw_file']}",
    ]


# -- reporting --------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[fmt(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def emit(name: str, result: Mapping[str, Any], text: str, as_json: bool) -> None:
    """Print the plain-text report, or the JSON document with ``--json``.

    With ``$BENCH_JSON_DIR`` set (``run_all.sh`` does), the JSON document is also written to
    ``<dir>/<name>.json`` (``<name>-2.json``... when the bench ran before in that directory).
    """
    document = json.dumps({"bench": name, **result}, indent=2, default=str)
    print(document if as_json else text, flush=True)
    directory = os.environ.get("BENCH_JSON_DIR")
    if directory:
        out = Path(directory) / f"{name}.json"
        serial = 1
        while out.exists():
            serial += 1
            out = Path(directory) / f"{name}-{serial}.json"
        out.write_text(document + "\n")


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"
