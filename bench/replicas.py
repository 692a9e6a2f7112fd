"""Replicas sharing one login through Redis: IdP token requests, new-token propagation, serving.

    .venv/bin/python -m bench.replicas [--replicas 1,3,10] [--ttl 4] [--window 45]
                                       [--propagation 3,10] [--propagation-window 60]
                                       [--conns 1,16,256] [--seconds 5] [--quick] [--json]

About 8-9 minutes with the defaults; ``--quick`` (1 and 10 replicas, 5 s windows, 1 s wrk
runs at 16 connections) takes under a minute and only shows the script works.

Starts its own ``redis-server`` (Debian's, no persistence, a temporary directory, a free
127.0.0.1 port), the fake IdP (``bench._idp``: ``FakeOAuth2`` with rotating refresh tokens,
rotated ones revoked, reuse detection on) and N real brokers (``python -m broker serve``),
each with the same provider: the password grant, then refresh tokens.

(1) IdP token requests for 1, 3 and 10 replicas, with the shared store (``store: {backend:
    redis}``, one key prefix per run) and without it (each broker alone). Tokens live
    ``--ttl`` s at the fake (4 s); after ``--warmup`` s (one lifetime) the fake's arrivals are
    counted over ``--window`` s. A broker plans its refreshes against a token's *serving*
    life, ``ttl - serve_min_remaining`` (1 s), so the count is normalised to 1-hour tokens by
    requests per serving life (invariant when every time constant scales with the lifetime;
    the 60 s refresh margin, which never binds for 1 h tokens, is set to 0 here):

        per_hour_1h = count / window x (ttl - 1) / (3600 - 1) x 3600

    Model: without the store N x 3600 / (ratio x 3599) = 1.5 N per hour; with it one
    replica refreshes for all, when the earliest of the N replicas' jittered plans comes
    (each draws its own after every new token): 3600 / ((ratio - jitter + 2 jitter / (N+1))
    x 3599), 1.5 / 1.62 / 1.71 per hour for 1 / 3 / 10 (10-replica/1-replica = 1.14). The
    IdP's answer time (``--idp-delay``) and the brokers' own work lengthen every cycle a
    little (not modelled). Target: with the store the 10-replica/1-replica ratio stays near
    1 (<= 1.25), without it it is ~N (>= 0.8 N).

(2) New-token propagation (store on, ``--propagation`` replica counts), from the IdP's
    answer to the first replica and to every replica serving the new token, two ways:

    * polls: after the counting window, for ``--propagation-window`` s. The fake stamps each
      token answer with ``time.monotonic()`` once written to the socket (CLOCK_MONOTONIC is
      one clock for every process of the host). The bench long-polls the fake for token
      requests *arriving*, waits ``--idp-delay`` (less 3 ms: the answer cannot be out
      sooner), then sends ``GET /token/p0`` to every replica still serving the old token
      every ``--poll-interval`` s (1 ms), on one keep-alive connection each (plain blocking
      sockets, cheaper per request than asyncio's streams), until each serves the new one. Polling
      granularity bounds the resolution: upper bound = the poll that got the new token was
      answered, lower bound = the last poll that still got the old one was sent. A round of
      N requests can take longer than the interval (``poll_period_ms``, measured).
    * log: each broker writes a ``token_refreshed`` line when it installs a token (JSON log
      lines, ms timestamps, truncated), matched with the fake's wall time of each answer:
      in the counting window (no polling at all) and in the polled window. Polling 10
      brokers every millisecond takes much of 2 cores, so the two windows tell what the
      polling itself adds.

(3) ``GET /token/p0`` with ``wrk --latency`` (``bench.serving.run_wrk``, the same client key
    and settings) on one broker with the store on vs one without it, 1-hour tokens (no
    refresh), both running, runs interleaved A B B A per connection count, brokers pinned to
    CPU 0 and wrk to CPU 1. Target: throughput on/off >= 0.95 (Redis is not on the serving
    path; the store-on broker only has its announcement listener and its heartbeat).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import mean
from typing import Any

import httpx
from cryptography.fernet import Fernet

from bench._common import (
    Answer,
    Broker,
    Idp,
    emit,
    free_port,
    machine,
    percentile,
    provider_yaml,
    ratio,
    start_broker,
    start_idp,
    stop,
    table,
    verdict,
    wait_ready,
)
from bench.serving import CLIENT_KEY, CLIENTS, WrkResult, run_wrk

REDIS_SERVER = "redis-server"
RATIO = 2 / 3
JITTER = 0.1
SERVE_MIN_REMAINING = 1.0
"""The broker's default ``refresh.serve_min_remaining``: the planning life is ttl minus this."""
REAL_TTL = 3600.0
TARGET_STORE_GROWTH = 1.25
"""With the store: IdP requests of the most replicas / of one replica, at most."""
TARGET_ALONE_GROWTH = 0.8
"""Without it: that ratio at least this fraction of the replica count."""
TARGET_SERVING = 0.95
MONITOR_KEY = "bench-monitor-key-0123456789abcdef"  # a bench-only key
MONITOR = ["  monitor:", f"    key: {{value: {MONITOR_KEY}}}", "    status: true"]
"""A client that may read /readyz's details (the store's backend and whether it answers)."""
TOKEN_PATH = "/token/p0"  # noqa: S105  # a path
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
LOGIN = ["    username: bench-user", "    password: bench-pw"]  # the fake's demo user


# -- redis-server ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the bench dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class RedisProcess:
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        stop(self.proc, timeout=10)


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def start_redis(directory: Path, patience: float = 10.0) -> RedisProcess:
    """``redis-server`` on a free 127.0.0.1 port in *directory*, no persistence."""
    program = shutil.which(REDIS_SERVER) or f"/usr/bin/{REDIS_SERVER}"
    if not Path(program).exists():
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    cmd += ["no", "--dir", str(directory), "--logfile", str(directory / "redis.log")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
    )
    server = RedisProcess(proc, port, directory)
    deadline = time.monotonic() + patience
    while not _ping(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.close()
            log = directory / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise SystemExit(f"redis-server did not answer PING (exit {proc.returncode}):\n{tail}")
        time.sleep(0.01)
    return server


# -- brokers ---------------------------------------------------------------------------------


def replica_config(
    path: Path,
    *,
    port: int,
    token_url: str,
    store: str | None,
    prefix: str,
    state_key: str,
    log_format: str,
) -> Path:
    """One replica: provider p0 (password grant, then rotating refresh tokens); with *store*
    (a Redis URL) the shared store under *prefix*, sealed with *state_key*."""
    lines = [f"port: {port}", "log_level: info", f"log_format: {log_format}", *CLIENTS, *MONITOR]
    lines.append(f"refresh: {{ratio: {RATIO!r}, jitter: {JITTER}, margin: 0}}")
    if store is not None:
        lines += ["store:", "  backend: redis", f'  url: "{store}"', f'  key_prefix: "{prefix}"']
        lines += ["  lease_ttl: 10", f'state_key: "{state_key}"']
    lines.append("providers:")
    provider = provider_yaml("p0", token_url, "bench", "bench-secret")
    lines += [line.replace("client_credentials", "password") for line in provider] + LOGIN
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # inline (fake) secrets
    return path


@dataclass
class Replicas:
    json_logs: bool
    brokers: list[Broker] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        return [int(b.url.rsplit(":", 1)[1]) for b in self.brokers]

    def close(self) -> list[int | None]:
        for broker in self.brokers:  # all at once: each shuts down in parallel
            if broker.proc.poll() is None:
                broker.proc.send_signal(signal.SIGTERM)
        return [broker.close() for broker in self.brokers]

    def problems(self) -> list[str]:
        return [
            f"replica {i}: {line}"
            for i, broker in enumerate(self.brokers)
            for line in (json_problems(broker) if self.json_logs else broker.problems())
        ]


def start_replicas(
    n: int,
    tag: str,
    *,
    idp: Idp,
    store: str | None,
    state_key: str,
    tmp: Path,
    cpus: str | None = None,
    json_logs: bool = False,
) -> Replicas:
    """*n* brokers on one login (with *store*, sharing it), all ready."""
    replicas = Replicas(json_logs)
    try:
        for i in range(n):
            port = free_port()
            config = replica_config(
                tmp / f"{tag}-{i}.yaml",
                port=port,
                token_url=idp.token_url,
                store=store,
                prefix=f"bench-{tag}:",
                state_key=state_key,
                log_format="json" if json_logs else "text",
            )
            replicas.brokers.append(start_broker(config, port, tmp / f"{tag}-{i}.log", cpus=cpus))
        for broker in replicas.brokers:
            wait_ready(broker.url, 60)
    except BaseException:
        replicas.close()
        raise
    return replicas


def store_brief(url: str) -> dict[str, Any] | None:
    """/readyz's store brief (backend, connected) as the monitor client sees it."""
    headers = {"Authorization": f"Bearer {MONITOR_KEY}"}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        brief = httpx.get(url + "/readyz", headers=headers, timeout=10, trust_env=False).json()
        store = brief.get("store")
        return store if isinstance(store, dict) else None
    return None


# -- (2) propagation -------------------------------------------------------------------------


class ReplicaConn:
    """One keep-alive HTTP/1.1 connection to a replica on a plain blocking socket: a poll
    costs a send and a recv or two, so the poller leaves the brokers more of the CPU than
    asyncio's tasks and streams would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = (
            f"GET {TOKEN_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
        ).encode()
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.reconnects = 0
        self.sent = 0.0

    def send(self) -> None:
        """Send the request (read the answer with :meth:`answer`)."""
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.buffer = b""
            self.sent = time.monotonic()
            try:
                self.sock.sendall(self.request)
                return
            except OSError:
                self._reconnect(attempt)

    def answer(self) -> tuple[str | None, float]:
        """The access token in the answer (None: not 200), and time.monotonic() once read."""
        try:
            head, body = self._read()
        except (OSError, ValueError):
            # The replica closed an idle connection: open another, ask once more.
            self._reconnect(0)
            self.send()
            head, body = self._read()
        seen = time.monotonic()
        if not head.startswith(b"HTTP/1.1 200"):
            return None, seen
        token = json.loads(body).get("access_token")
        return (token if isinstance(token, str) else None), seen

    def token(self) -> tuple[str | None, float]:
        self.send()
        return self.answer()

    def _read(self) -> tuple[bytes, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._recv()
        head = self.buffer[:end]
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(self.buffer) < end + 4 + length:
            self._recv()
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        return head, body

    def _recv(self) -> None:
        chunk = self.sock.recv(65536) if self.sock is not None else b""
        if not chunk:
            raise ConnectionResetError("closed by the replica")
        self.buffer += chunk

    def _reconnect(self, attempt: int) -> None:
        self.close()
        self.reconnects += 1
        if attempt:
            raise ConnectionError(f"replica on port {self.port} does not answer")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None


@dataclass
class Chase:
    """One new token, chased from the moment its answer could first be out."""

    armed: float
    """When the first tight poll went out."""
    seen: list[tuple[str, float, float] | None]
    """Per replica: the new token, when the last poll that still got the old one was sent
    (or the chase began), and when the first poll that got the new one was answered."""
    rounds: int
    period: float | None


def chase(
    conns: Sequence[ReplicaConn], before: list[str | None], deadline: float, interval: float
) -> tuple[Chase, list[str | None]]:
    """Poll every replica each *interval* s until each serves a token other than *before*
    (or until *deadline*); a replica seen with it is polled no more. Returns the chase and
    what each replica served last."""
    armed = time.monotonic()
    seen: list[tuple[str, float, float] | None] = [None] * len(conns)
    latest = list(before)
    old_sent = [armed] * len(conns)
    starts: list[float] = []
    while True:
        started = time.monotonic()
        starts.append(started)
        waiting = [i for i, s in enumerate(seen) if s is None]
        for i in waiting:  # every request in flight at once, then the answers in turn
            conns[i].send()
        for i in waiting:
            token, at = conns[i].answer()
            latest[i] = token
            if token is not None and token != before[i]:
                seen[i] = (token, old_sent[i], at)
            else:
                old_sent[i] = conns[i].sent
        if all(s is not None for s in seen) or time.monotonic() > deadline:
            break
        pause = started + interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    period = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else None
    return Chase(armed, seen, len(starts), period), latest


def propagation(idp: Idp, ports: list[int], seconds: float, args: argparse.Namespace) -> Polled:
    """Chase every new token the IdP issues for *seconds*."""
    conns = [ReplicaConn(port) for port in ports]
    until = time.monotonic() + seconds
    chases: list[Chase] = []
    # Tight polling starts shortly before the answer can be out: the fake holds every
    # token request --idp-delay s (less 3 ms for the news of its arrival to get here).
    lead = max(args.idp_delay - 0.003, 0.0)
    try:
        wait = idp.client.get("/_bench/wait", params={"count": 1 << 40, "timeout": 0})
        count = int(wait.json()["count"])
        current = [conn.token()[0] for conn in conns]
        while (left := until - time.monotonic()) > 0:
            params: dict[str, float] = {"count": count, "timeout": min(1.0, left)}
            arrived = int(idp.client.get("/_bench/wait", params=params).json()["count"])
            if arrived <= count:  # nothing new: one look keeps the connections alive
                current = [conn.token()[0] for conn in conns]
                continue
            heard = time.monotonic()
            count = arrived
            time.sleep(lead)
            one, current = chase(conns, current, heard + lead + args.settle, args.poll_interval)
            chases.append(one)
    finally:
        for conn in conns:
            conn.close()
    return Polled(chases, sum(c.reconnects for c in conns))


@dataclass
class Polled:
    chases: list[Chase]
    reconnects: int


def delays_row(
    replicas: int, method: str, first: list[float], last: list[float], **extra: Any
) -> dict[str, Any]:
    """Answer -> first replica and answer -> every replica (seconds in, ms out)."""
    ms = 1000.0
    return {
        "replicas": replicas,
        "method": method,
        "samples": len(last),
        "first_p50_ms": percentile(first, 50) * ms,
        "first_p99_ms": percentile(first, 99) * ms,
        "all_p50_ms": percentile(last, 50) * ms,
        "all_p99_ms": percentile(last, 99) * ms,
        "all_max_ms": max(last, default=float("nan")) * ms,
        **extra,
        "all_ms": [round(v * ms, 3) for v in last],
    }


def summarise_chases(n: int, polled: Polled, answers: list[Answer]) -> list[dict[str, Any]]:
    """Two rows: upper bounds (the polls that got the new token, answered) and lower bounds
    (the last polls that still got the old one, sent; never before the IdP's answer)."""
    issued = {a.access_token: a.monotonic for a in answers if a.access_token is not None}
    upper: tuple[list[float], list[float]] = ([], [])
    lower: tuple[list[float], list[float]] = ([], [])
    head: list[float] = []
    periods = [c.period for c in polled.chases if c.period is not None]
    problems: Counter[str] = Counter()
    for one in polled.chases:
        seen = [s for s in one.seen if s is not None]
        if len(seen) < len(one.seen):
            problems["not_all_replicas"] += 1  # within --settle: the request failed, or late
            if not seen:
                continue
        tokens = {token for token, _, _ in seen}
        if len(tokens) > 1:
            problems["replicas_disagree"] += 1
            continue
        answered = issued.get(tokens.pop())
        if answered is None:
            problems["not_issued_in_window"] += 1
            continue
        if answered < one.armed:
            problems["chase_began_after_the_answer"] += 1  # the bounds still hold
        head.append(answered - one.armed)
        highs = [at - answered for _, _, at in seen]
        lows = [max(low - answered, 0.0) for _, low, _ in seen]
        upper[0].append(min(highs))
        lower[0].append(min(lows))
        if len(seen) == len(one.seen):
            upper[1].append(max(highs))
            lower[1].append(max(lows))
    ms = 1000.0
    extra: dict[str, Any] = {
        "poll_period_ms": mean(periods) * ms if periods else float("nan"),
        "tokens_chased": len(polled.chases),
        "head_start_ms_p50": percentile(head, 50) * ms,
        "problems": dict(problems),
        "reconnects": polled.reconnects,
    }
    return [
        delays_row(n, "polls: upper bound", *upper, **extra),
        delays_row(n, "polls: lower bound", *lower, **extra),
    ]


def installs(
    n: int, method: str, brokers: Sequence[Broker], answers: list[Answer], span: tuple[float, float]
) -> dict[str, Any]:
    """Answer -> install from the brokers' own ``token_refreshed`` log lines (JSON, wall
    time in ms, truncated: each figure is low by up to 1 ms), for the tokens the IdP issued
    within *span* (wall times). Unaffected by polling: the line is written on install.
    ``requester``: the replica that asked the IdP (its line's reason is not ``announced``)."""
    issued = sorted(a.wall for a in answers if a.status == 200 and span[0] <= a.wall < span[1])
    logged = [sorted(refreshed_at(b.log_path)) for b in brokers]
    first: list[float] = []
    last: list[float] = []
    requester: list[float] = []
    missing = 0
    for k, answered in enumerate(issued):
        following = issued[k + 1] if k + 1 < len(issued) else math.inf
        per_replica = []
        for lines in logged:
            # The line's ms timestamp is truncated: it may read up to 1 ms before the answer.
            after = [(t, r) for t, r in lines if answered - 0.001 <= t < following - 0.001]
            if after:
                delay = max(after[0][0] - answered, 0.0)
                per_replica.append(delay)
                if after[0][1] != "announced":
                    requester.append(delay)
        if not per_replica:
            continue
        first.append(min(per_replica))
        if len(per_replica) == len(logged):
            last.append(max(per_replica))
        else:
            missing += 1
    return delays_row(
        n,
        method,
        first,
        last,
        requester_p50_ms=percentile(requester, 50) * 1000,
        not_installed_everywhere=missing,
    )


def refreshed_at(log_path: Path) -> list[tuple[float, str]]:
    """Wall time and reason of each ``token_refreshed`` line (a new token installed) in a
    JSON log."""
    times = []
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    for line in text.splitlines():
        if '"token_refreshed"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if record.get("event") == "token_refreshed":
                ts = datetime.fromisoformat(record["ts"]).timestamp()
                times.append((ts, str(record.get("reason"))))
    return times


def json_problems(broker: Broker) -> list[str]:
    """WARNING and worse lines of a JSON log, minus the expected no-state_dir notice."""
    out = []
    text = broker.log_path.read_text(errors="replace") if broker.log_path.exists() else ""
    for line in text.splitlines():
        level = re.search(r'"level": "(\w+)"', line)
        bad = level is not None and level.group(1) in {"WARNING", "ERROR", "CRITICAL"}
        if bad and "no state_dir configured" not in line:
            out.append(line)
    return out


# -- (1) token requests ----------------------------------------------------------------------


def expected_per_hour(n: int, shared: bool) -> float:
    """The model in the module text, per hour for 1-hour tokens."""
    life = REAL_TTL - SERVE_MIN_REMAINING
    if not shared:
        return n * REAL_TTL / (RATIO * life)
    earliest = RATIO - JITTER + 2 * JITTER / (n + 1)  # E[min of n uniform draws]
    return REAL_TTL / (earliest * life)


def count_run(
    n: int,
    shared: bool,
    run: int,
    args: argparse.Namespace,
    idp: Idp,
    redis: RedisProcess,
    state_key: str,
    tmp: Path,
) -> dict[str, Any]:
    """Start *n* replicas, wait one lifetime, count the IdP's token requests over the window;
    with the store, then chase the new tokens (replica counts in --propagation)."""
    tag = f"r{run}-{n}-{'on' if shared else 'off'}"
    answers_before = len(idp.answers())
    started = time.monotonic()
    store = redis.url if shared else None
    replicas = start_replicas(
        n, tag, idp=idp, store=store, state_key=state_key, tmp=tmp, json_logs=True
    )
    polled: Polled | None = None
    try:
        ready_s = time.monotonic() - started
        stores = [store_brief(b.url) for b in replicas.brokers]
        time.sleep(args.warmup)
        window = (time.time(), time.time() + args.window)
        time.sleep(args.window)
        if shared and n in args.propagation and args.propagation_window > 0:
            polled = propagation(idp, replicas.ports, args.propagation_window, args)
        polled_span = (window[1], time.time())
        log = idp.log(window[0])
        answers = idp.answers(answers_before)
    finally:
        codes = replicas.close()
        problems = replicas.problems()
    delays: list[dict[str, Any]] = []
    if shared:
        delays.append(installs(n, "log: unpolled window", replicas.brokers, answers, window))
        if polled is not None:
            delays += summarise_chases(n, polled, answers)
            span = polled_span
            delays.append(installs(n, "log: polled window", replicas.brokers, answers, span))
    counted = [entry for entry in log if entry[0] < window[1]]
    grants = Counter(grant for _, _, grant in counted)
    failed = Counter(f"{a.grant} {a.status}" for a in answers if a.status != 200)
    connected = [s.get("connected") if s else None for s in stores]
    factor = (args.ttl - SERVE_MIN_REMAINING) / (REAL_TTL - SERVE_MIN_REMAINING)
    factor *= REAL_TTL / args.window
    row: dict[str, Any] = {
        "store": "redis" if shared else "alone",
        "replicas": n,
        "ready_s": ready_s,
        "idp_requests": len(counted),
        "refresh_grants": grants.get("refresh_token", 0),
        "logins": grants.get("password", 0),
        "per_hour_1h": len(counted) * factor,
        "model_per_hour": expected_per_hour(n, shared),
        "idp_errors": sum(failed.values()),
        "store_connected": all(c is True for c in connected) if shared else None,
        "exit_codes": codes,
        "idp_error_kinds": dict(failed),
        "broker_log_problems": problems[:10],
        "arrivals_s": [round(arrived - window[0], 3) for arrived, _, _ in counted],
    }
    return {"row": row, "delays": delays}


# -- (3) serving -----------------------------------------------------------------------------


def serving(
    args: argparse.Namespace, idp: Idp, redis: RedisProcess, state_key: str, tmp: Path
) -> dict[str, Any]:
    idp.set(ttl=REAL_TTL)  # no refresh during the runs
    server_cpus = "0" if args.pin else None
    wrk_cpus = "1" if args.pin else None
    threads = 1 if args.pin else 2
    sides: dict[str, Replicas] = {}
    try:
        sides["off"] = start_replicas(
            1, "serve-off", idp=idp, store=None, state_key=state_key, tmp=tmp, cpus=server_cpus
        )
        sides["on"] = start_replicas(
            1, "serve-on", idp=idp, store=redis.url, state_key=state_key, tmp=tmp, cpus=server_cpus
        )
        urls = {name: side.brokers[0].url + TOKEN_PATH for name, side in sides.items()}
        for url in urls.values():
            answer = httpx.get(url, headers=AUTH, timeout=10, trust_env=False)
            answer.raise_for_status()
        store = store_brief(sides["on"].brokers[0].url)
        for url in urls.values():  # warm-up: first requests, lazy imports, CPU frequency
            run_wrk(url, 16, 1, wrk_cpus, threads)
        results: dict[tuple[str, int], list[WrkResult]] = {}
        for conns in args.conns:
            for _ in range(args.repeat):
                for name in ("off", "on", "on", "off"):  # A B B A
                    res = run_wrk(urls[name], conns, args.seconds, wrk_cpus, threads)
                    results.setdefault((name, conns), []).append(res)
    finally:
        problems: list[str] = []
        for name, side in sides.items():
            side.close()
            problems += [f"{name}: {line}" for line in side.problems()]
    rows = []
    for conns in args.conns:
        off, on = results[("off", conns)], results[("on", conns)]
        row: dict[str, Any] = {
            "conns": conns,
            "off_rps": mean(r.rps for r in off),
            "on_rps": mean(r.rps for r in on),
            "off_p50_ms": mean(r.p50_ms for r in off),
            "on_p50_ms": mean(r.p50_ms for r in on),
            "off_p99_ms": mean(r.p99_ms for r in off),
            "on_p99_ms": mean(r.p99_ms for r in on),
            "errors": sum(r.errors for r in off + on),
        }
        row["rps_ratio"] = ratio(row["on_rps"], row["off_rps"])
        row["p99_ratio"] = ratio(row["on_p99_ms"], row["off_p99_ms"])
        row["met"] = row["rps_ratio"] >= TARGET_SERVING and row["errors"] == 0
        rows.append(row)
    return {"rows": rows, "store": store, "broker_log_problems": problems[:10]}


# -- main ------------------------------------------------------------------------------------


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,3,10", help="replica counts for (1)")
    parser.add_argument("--ttl", type=float, default=4.0, help="token lifetime at the fake, s")
    parser.add_argument("--window", type=float, default=45.0, help="counting window per run, s")
    parser.add_argument("--warmup", type=float, default=None, help="s after ready (one ttl)")
    parser.add_argument("--idp-delay", type=float, default=0.02, help="IdP answer time, s")
    parser.add_argument("--propagation", default="3,10", help="replica counts for (2)")
    parser.add_argument(
        "--propagation-window", type=float, default=60.0, help="s of polling per count (2)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.001, help="s between polls")
    parser.add_argument("--settle", type=float, default=1.0, help="s to wait for all replicas")
    parser.add_argument("--conns", default="1,16,256", help="wrk connection counts for (3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--repeat", type=int, default=1, help="A B B A rounds per point (3)")
    parser.add_argument("--no-serving", dest="serving", action="store_false", help="skip (3)")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--quick", action="store_true", help="a tiny run (< 1 min), no verdicts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.replicas, args.window, args.warmup = "1,10", 5.0, 2.0
        args.propagation, args.propagation_window = "10", 5.0
        args.conns, args.seconds = "16", 1.0
    args.replicas = _ints(args.replicas)
    args.propagation = _ints(args.propagation)
    args.conns = _ints(args.conns)
    if args.warmup is None:
        args.warmup = args.ttl
    if args.ttl - SERVE_MIN_REMAINING < 2:
        raise SystemExit("--ttl must be at least 3 s (the broker serves a token until 1 s left)")
    if args.pin and (machine()["nproc"] or 1) < 2:
        args.pin = False
    if args.serving and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    signal.signal(signal.SIGTERM, _terminated)  # stop what was started (the finally blocks)
    began = time.monotonic()
    state_key = Fernet.generate_key().decode()

    rows: list[dict[str, Any]] = []
    props: list[dict[str, Any]] = []
    serve: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmpdir:
        tmp = Path(tmpdir)
        redis = start_redis(tmp / "redis")
        idp = start_idp(ttl=args.ttl, delay=args.idp_delay, reuse_detection=True)
        try:
            run = 0
            for index, n in enumerate(args.replicas):
                # Alone first, then shared, then the other way round: drift hits both alike.
                for shared in (False, True) if index % 2 == 0 else (True, False):
                    run += 1
                    one = count_run(n, shared, run, args, idp, redis, state_key, tmp)
                    rows.append(one["row"])
                    props += one["delays"]
            if args.serving:
                serve = serving(args, idp, redis, state_key, tmp)
        finally:
            idp.close()
            redis.close()

    for kind in ("alone", "redis"):
        side = [r for r in rows if r["store"] == kind]
        base = next((r for r in side if r["replicas"] == 1), None)
        for row in side:
            row["x_1_replica"] = ratio(row["idp_requests"], base["idp_requests"]) if base else None
    verdicts = judge(rows, serve)
    result: dict[str, Any] = {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "normalisation": "per_hour_1h = count / window_s x (ttl - 1) / (3600 - 1) x 3600",
        "requests": rows,
        "propagation": props,
        "serving": serve,
        "verdicts": verdicts,
        "elapsed_s": time.monotonic() - began,
    }
    emit("replicas", result, report(args, rows, props, serve, verdicts, result), args.json)
    if args.quick:
        return 0
    return 0 if all(v["met"] for v in verdicts.values() if v["met"] is not None) else 1


def judge(rows: list[dict[str, Any]], serve: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shared in ("redis", "alone"):
        side = sorted((r for r in rows if r["store"] == shared), key=lambda r: r["replicas"])
        if len(side) < 2 or side[0]["replicas"] != 1:
            continue
        most = side[-1]
        growth = most["x_1_replica"]
        if shared == "redis":
            met = growth <= TARGET_STORE_GROWTH and all(r["idp_errors"] == 0 for r in side)
            target = f"<= {TARGET_STORE_GROWTH:g}, no IdP errors"
        else:
            met = growth >= TARGET_ALONE_GROWTH * most["replicas"]
            target = f">= {TARGET_ALONE_GROWTH:g} x {most['replicas']}"
        out[f"requests_{shared}"] = {
            "figure": f"{most['replicas']}-replica / 1-replica IdP requests ({shared})",
            "value": growth,
            "target": target,
            "met": met,
        }
    if serve is not None:
        out["serving"] = {
            "figure": "GET /token throughput, store on / off (worst connection count)",
            "value": min(r["rps_ratio"] for r in serve["rows"]),
            "target": f">= {TARGET_SERVING:g}, no errors",
            "met": all(r["met"] for r in serve["rows"]),
        }
    return out


def report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    props: list[dict[str, Any]],
    serve: dict[str, Any] | None,
    verdicts: dict[str, Any],
    result: dict[str, Any],
) -> str:
    factor = (args.ttl - 1) / (REAL_TTL - 1) * REAL_TTL / args.window
    lines = [
        f"(1) IdP token requests, {args.ttl:g} s tokens, counted over {args.window:g} s after"
        f" {args.warmup:g} s of warm-up (fake IdP answers in {args.idp_delay * 1000:g} ms;"
        " rotating refresh tokens, reuse detection)",
        f"    per_hour_1h = count / {args.window:g} s x ({args.ttl:g} - 1)/(3600 - 1) x 3600"
        f" = count x {factor:.4g}: requests per serving life (ttl - serve_min_remaining 1 s,"
        " what refreshes are planned against) x serving lives per hour of a 1-hour token;"
        " refresh margin 0 (never binds at 1 h)",
        "    model: alone N x 1.5/h; redis: the earliest of N jittered plans,"
        " 3600 / ((ratio - jitter + 2 jitter/(N+1)) x 3599)",
        table(
            rows,
            [
                "store",
                "replicas",
                "ready_s",
                "idp_requests",
                "refresh_grants",
                "logins",
                "per_hour_1h",
                "model_per_hour",
                "x_1_replica",
                "idp_errors",
                "store_connected",
            ],
        ),
    ]
    if props:
        lines += [
            "",
            "(2) new token -> served by the first replica and by every replica (store on),"
            " from the IdP's answer. polls: after the counting window, for"
            f" {args.propagation_window:g} s, each replica's GET /token/p0 on a keep-alive"
            f" connection every {args.poll_interval * 1000:g} ms (or as fast as one round of"
            " N requests goes: poll_period_ms), from --idp-delay after the request reached"
            " the fake (time.monotonic() of its answer, in the fake, once written); the"
            " polling granularity bounds the resolution: upper bound = the poll that got the"
            " new token answered, lower bound = the last poll that still got the old one"
            " sent. log: the brokers' own token_refreshed lines (written on install, ms,"
            " truncated), in the unpolled counting window and in the polled one;"
            " requester = the replica that asked the IdP",
            table(
                props,
                [
                    "replicas",
                    "method",
                    "samples",
                    "first_p50_ms",
                    "first_p99_ms",
                    "all_p50_ms",
                    "all_p99_ms",
                    "all_max_ms",
                    "requester_p50_ms",
                    "poll_period_ms",
                ],
            ),
        ]
        for p in props:
            if p.get("problems") or p.get("reconnects") or p.get("not_installed_everywhere"):
                lines.append(
                    f"    {p['replicas']} replicas, {p['method']}: {p.get('problems', {})},"
                    f" {p.get('reconnects', 0)} reconnections,"
                    f" {p.get('not_installed_everywhere', 0)} not installed everywhere"
                )
    if serve is not None:
        lines += [
            "",
            f"(3) GET /token/p0 on one broker, store on vs off (wrk --latency, {args.seconds:g}"
            f" s per run, A B B A x {args.repeat}, means; pinned={args.pin};"
            f" store-on broker's store: {serve['store']})",
            table(
                serve["rows"],
                [
                    "conns",
                    "off_rps",
                    "on_rps",
                    "rps_ratio",
                    "off_p50_ms",
                    "on_p50_ms",
                    "off_p99_ms",
                    "on_p99_ms",
                    "p99_ratio",
                    "errors",
                    "met",
                ],
            ),
        ]
    lines.append("")
    note = " (quick run: too few events to judge)" if args.quick else ""
    for v in verdicts.values():
        lines.append(
            f"{v['figure']}: {v['value']:.3g}, target {v['target']}: {verdict(v['met'])}{note}"
        )
    for row in rows:
        if row["broker_log_problems"] or row["idp_error_kinds"]:
            lines.append(
                f"{row['store']} x{row['replicas']}: IdP errors {row['idp_error_kinds']},"
                f" broker warnings {row['broker_log_problems']}"
            )
    if serve is not None and serve["broker_log_problems"]:
        lines.append(f"serving: broker warnings {serve['broker_log_problems']}")
    lines.append(f"elapsed: {result['elapsed_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
