"""Issue 14, "Many replicas, one login", with real processes: three ``broker serve``
replicas sharing one real redis-server, in front of one fake Aerion on a real socket that
rotates refresh tokens and detects their reuse (a rotated-away refresh token presented
again revokes the whole login). tests/test_replicas.py runs two brokers in one event loop
on a fake clock; here everything runs in real time, so the tokens are short (TTL below)
and so is the lease (LEASE_TTL).

The test sees the replicas from outside, as their callers and the identity provider do:

* :class:`Tap`, an ASGI middleware in front of the fake's token endpoint, records every
  token request (when it arrived, from which client port, what it presented, what it was
  answered and when the answer left); it can hold each request for a moment before and
  after the fake sees it, so that a replica can be killed with its request in flight.
* :class:`Pollers`: one thread per replica asks ``GET /token/p`` every POLL seconds and
  asks the fake, at once, what it thinks of the token served (valid, expired, revoked).
* :class:`Replicas`: the three processes (``tests.support.process``); a client port is
  traced to the replica that owns it through ``/proc`` (the socket's inode).

Every test prints what it measured (run with ``-s`` to see it): the delay from a token's
issue to the moment all three replicas serve it, the longest a replica served nothing, the
kill rounds. A failing test lists every expectation it missed, with the replicas' warnings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.fakes import WorldQuirks
from broker.fakes.aerion import FakeAerion
from broker.fakes.server import serve_in_thread
from tests.redisserver import RedisServer, RestartableRedis, restartable_redis_server
from tests.support import Running, free_port, process, ready, wait_for
from tests.tcpproxy import StallingProxy

pytestmark = pytest.mark.smoke

TTL = 3.0
"""The fake's token lifetime (real seconds). A token is served until it has less than
serve_min_remaining (1 s) left, so for its first 2 s."""
LEASE_TTL = 2.0
PLANNED_CYCLE = 2 * (2 / 3 - 0.1)
"""The shortest refresh interval (1.13 s): the broker plans a refresh against the end of
serving (serve_until, 2 s after the token's start here), at 2/3 of it plus or minus 0.1
of it (the default jitter), and no later than a third of it before its end."""
SHORTEST_CYCLE = PLANNED_CYCLE / 2
"""Seconds that must lie between two token requests of one shared login: two replicas
asking in one cycle are milliseconds apart, and a request that the loaded machine delays
by up to half a cycle does not count as one."""
COUNT = 3
"""Replicas."""
CYCLES = 10
POLL = 0.02
"""Seconds between two GETs of one poller: the resolution of the propagation delays."""
PROPAGATION_LIMIT = 1.0
"""Seconds within which every replica must serve a newly issued token (the worst case
measured; the typical one is printed)."""
START_PATIENCE = 30.0
"""Seconds a replica may take to start and serve its first token (3 Python processes
starting at once on 2 shared cores)."""
TOKEN_PATH = "/oauth2/token"

TENANT = "acme"
USER = "alice@example.com"
USER_PASSWORD = "alice-pw-0123456789"
CLIENT_ID = "credential-broker"

CONFIG = """\
log_level: info
request_timeout: 2
refresh:
  caller_burst: 1000  # the kill rounds force refreshes
store:
  backend: redis
  url: {{env: TEST_REDIS_URL}}
  key_prefix: '{prefix}'
  lease_ttl: {lease_ttl:g}
providers:
  p:
    type: aerion
    url: {idp}
    company_url: https://{tenant}.aerion.app
    timeout: 5
"""
PASSWORD = "    username: {user}\n    password: {{env: TEST_PASSWORD}}\n"
"""The password grant (Aerion's: a username means the password grant)."""
SEED_ONLY = "    refresh_token: {env: TEST_SEED}\n"
"""One refresh token and no password (Aerion's refresh_token grant): a login that dies
if a rotated-away refresh token is ever presented."""

VALID, EXPIRED, REVOKED, UNKNOWN = "valid", "expired", "revoked", "unknown"


# -- what the identity provider sees ----------------------------------------------------------


@dataclass
class Exchange:
    """One token request as the tap saw it. Times are ``time.monotonic()``."""

    number: int
    port: int
    """The client's (a replica's) port."""
    arrived: float
    form: dict[str, str]
    dropped: float | None = None
    """When the tap saw the client gone before the fake saw the request (never sent on)."""
    forwarded: float | None = None
    """When the fake got the request."""
    answered: float | None = None
    """When its answer was sent to the client (a dead client's is lost)."""
    status: int | None = None
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def grant(self) -> str:
        return self.form.get("grant_type", "")

    @property
    def presented(self) -> str | None:
        """The refresh token a refresh request presented."""
        return self.form.get("refresh_token") if self.grant == "refresh_token" else None

    @property
    def access_token(self) -> str | None:
        token = self.answer.get("access_token") if self.status == 200 else None
        return token if isinstance(token, str) else None

    @property
    def refresh_token(self) -> str | None:
        token = self.answer.get("refresh_token") if self.status == 200 else None
        return token if isinstance(token, str) else None

    @property
    def error(self) -> str:
        return "" if self.status == 200 else str(self.answer.get("error", self.status))

    def pending_at(self, moment: float) -> bool:
        """Whether the request was in flight at *moment*: arrived, and neither dropped nor
        answered yet."""
        return self.arrived <= moment and not any(
            t is not None and t <= moment for t in (self.dropped, self.answered)
        )

    def __str__(self) -> str:
        what = self.grant + (f" {self.presented[:8]}" if self.presented else "")
        outcome = "dropped" if self.dropped is not None else self.error or "ok"
        return f"#{self.number} {what} from :{self.port} at {self.arrived:.3f}: {outcome}"


class Tap:
    """ASGI middleware in front of *app*'s token endpoint (see the module text). Each token
    request is held *before* seconds before the fake sees it (if its client goes away
    meanwhile it is dropped: it never reaches the fake) and its answer *after* seconds
    before it is sent (if the client has gone, the fake has issued tokens nobody gets)."""

    def __init__(self, app: ASGIApp, *, before: float = 0.0, after: float = 0.0) -> None:
        self._app = app
        self.before = before
        self.after = after
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._armed: Callable[[Exchange], None] | None = None

    def arm(self, hook: Callable[[Exchange], None]) -> None:
        """Call *hook* once, in the server's event loop, when the next token request has
        arrived (before it is held): what it schedules on that loop (``call_later``) runs in
        order with the holds, however late the loop runs."""
        with self._lock:
            self._armed = hook

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def count(self) -> int:
        with self._lock:
            return len(self._exchanges)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(TOKEN_PATH):
            await self._app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # gone before its request was complete
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        client = scope.get("client")
        with self._lock:
            exchange = Exchange(
                number=len(self._exchanges),
                port=int(client[1]) if client else 0,
                arrived=time.monotonic(),
                form=dict(parse_qsl(body.decode("utf-8", "replace"))),
            )
            self._exchanges.append(exchange)
            hook, self._armed = self._armed, None
        if hook is not None:
            hook(exchange)
        held_until = exchange.arrived + self.before  # from the arrival, whatever the hook took
        if self.before > 0 and await _gone_within(receive, held_until - time.monotonic()):
            exchange.dropped = time.monotonic()
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        exchange.forwarded = time.monotonic()
        await self._app(scope, replay, hold)
        answer = b"".join(m.get("body", b"") for m in held if m["type"] == "http.response.body")
        with contextlib.suppress(ValueError):
            parsed = json.loads(answer)
            exchange.answer = parsed if isinstance(parsed, dict) else {}
        exchange.status = next(int(m["status"]) for m in held if m["type"] == "http.response.start")
        if self.after > 0:
            await asyncio.sleep(self.after)
        exchange.answered = time.monotonic()
        for message in held:
            await send(message)  # uvicorn drops it silently if the client has gone


async def _gone_within(receive: Receive, seconds: float) -> bool:
    """Whether the client goes away within *seconds* (its request already read)."""
    try:
        message = await asyncio.wait_for(receive(), seconds)
    except TimeoutError:
        return False
    return bool(message["type"] == "http.disconnect")


# -- what the replicas serve ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One ``GET /token/p`` of one replica, and what the fake said of the token at once."""

    replica: int
    sent: float
    at: float
    """When the answer came (``time.monotonic()``)."""
    status: int | None
    """None: no answer (the replica is down, or starting)."""
    token: str | None
    expires_in: float | None
    state: str
    """VALID, EXPIRED, REVOKED or UNKNOWN by the fake's word; "" without a token."""


def judged(fake: FakeAerion, token: str) -> str:
    """What the fake thinks of an access token now."""
    if fake.is_access_token_valid(token):
        return VALID
    expires_at = fake.access_token_expires_at(token)
    if expires_at is None:
        return UNKNOWN
    return EXPIRED if fake.now() >= expires_at else REVOKED


class Pollers:
    """One thread per replica, asking for the token every POLL seconds until stopped."""

    def __init__(self, fake: FakeAerion, bases: list[str], interval: float = POLL) -> None:
        self._fake = fake
        self._bases = bases
        self.interval = interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.samples: list[list[Sample]] = [[] for _ in bases]

    def start(self) -> None:
        for replica, base in enumerate(self._bases):
            thread = threading.Thread(target=self._poll, args=(replica, base), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Sample]:
        """Stop polling; every sample, in the order they were taken."""
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return sorted((s for samples in self.samples for s in samples), key=lambda s: s.sent)

    def latest(self, replica: int) -> Sample | None:
        samples = self.samples[replica]
        return samples[-1] if samples else None

    def serving_since(self, replica: int, moment: float) -> bool:
        """Whether the replica's latest answer, asked for after *moment*, was a token."""
        latest = self.latest(replica)
        return latest is not None and latest.sent > moment and latest.status == 200

    def _poll(self, replica: int, base: str) -> None:
        with httpx.Client(base_url=base, timeout=5) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                status: int | None = None
                token: str | None = None
                expires_in: float | None = None
                state = ""
                try:
                    answer = client.get("/token/p")
                    status = answer.status_code
                    if status == 200:
                        body = answer.json()
                        token, expires_in = str(body["access_token"]), float(body["expires_in"])
                        state = judged(self._fake, token)
                except httpx.TransportError:
                    pass
                self.samples[replica].append(
                    Sample(replica, sent, time.monotonic(), status, token, expires_in, state)
                )
                self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))


# -- the replicas ----------------------------------------------------------------------------------


class Replicas:
    """COUNT ``broker serve`` processes on one config, each on a port of its own; a killed
    one can be started again on its port. Every process ends with the ExitStack."""

    def __init__(self, stack: ExitStack, config: Path, env: dict[str, str], idp_port: int):
        self._stack = stack
        self._config = config
        self._env = env
        self._idp_port = idp_port
        self.ports = [free_port() for _ in range(COUNT)]
        self.runs: list[list[Running]] = [[] for _ in range(COUNT)]
        """Every process each replica has been, the current one last."""
        self.started: list[float] = [0.0] * COUNT
        """When each replica's current process was started."""
        self.lives: list[list[tuple[float, float | None]]] = [[] for _ in range(COUNT)]
        """Each process's start and (None while alive) the moment it was killed."""

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, replica: int) -> Running:
        args = ("serve", "--config", str(self._config), "--port", str(self.ports[replica]))
        run = self._stack.enter_context(process(*args, env=self._env))
        self.runs[replica].append(run)
        self.started[replica] = time.monotonic()
        self.lives[replica].append((self.started[replica], None))
        return run

    def current(self, replica: int) -> Running:
        return self.runs[replica][-1]

    def alive(self, replica: int) -> bool:
        return self.current(replica).proc.poll() is None

    def wait_ready(self, replica: int, timeout: float = START_PATIENCE) -> None:
        base, proc = self.bases[replica], self.current(replica).proc
        try:
            wait_for(lambda: ready(base, proc), timeout=timeout, interval=0.05)
        except AssertionError:
            tail = "\n  ".join(self.output(replica).splitlines()[-15:])
            pytest.fail(f"replica {replica} is not ready {timeout:g} s after its start:\n  {tail}")

    def kill(self, replica: int) -> float:
        """SIGKILL the replica's process and wait for its end; when it was killed."""
        killed = self.signal_kill(self.current(replica).proc.pid)
        self.reap(replica, killed)
        return killed

    @staticmethod
    def signal_kill(pid: int) -> float:
        """Send SIGKILL (from any thread); when."""
        os.kill(pid, signal.SIGKILL)
        return time.monotonic()

    def reap(self, replica: int, killed: float) -> None:
        """Wait for the end of the replica's process, killed at *killed*."""
        self.current(replica).proc.wait()
        self.lives[replica][-1] = (self.started[replica], killed)

    def idp_ports(self, replica: int) -> set[int]:
        """The local ports of the replica's connections to the identity provider."""
        inodes = socket_inodes(self.current(replica).proc.pid)
        return {port for port, inode in connections_to(self._idp_port).items() if inode in inodes}

    def owner(self, port: int) -> int | None:
        """The replica whose live process has a connection to the identity provider from
        *port*, or None."""
        inode = connections_to(self._idp_port).get(port)
        if inode is None:
            return None
        for replica in range(COUNT):
            if self.alive(replica) and inode in socket_inodes(self.current(replica).proc.pid):
                return replica
        return None

    def output(self, replica: int) -> str:
        return "".join(run.output for run in self.runs[replica])

    def arrivals(self) -> list[tuple[int, int, int]]:
        """How each replica got its tokens, from its log: (by a request of its own, by an
        announcement, by reading the store inside the lease at its own refresh)."""
        counts = []
        for replica in range(COUNT):
            text = self.output(replica)
            announced = text.count("new token (announced)")
            # Logged by both ways of taking another broker's token: the listener's and the
            # token request's inside the lease.
            in_lease = text.count("taking the token another broker obtained") - announced
            own = text.count("p: new token (") - announced - in_lease
            counts.append((own, announced, in_lease))
        return counts

    def warnings(self, tail: int = 25) -> str:
        """The last WARNING and ERROR lines of each replica (all its processes)."""
        parts = []
        for replica in range(COUNT):
            lines = [
                line
                for line in self.output(replica).splitlines()
                if " WARNING " in line or " ERROR " in line or "Traceback" in line
            ]
            parts.append(f"replica {replica}:\n  " + "\n  ".join(lines[-tail:]))
        return "\n".join(parts)


def connections_to(port: int) -> dict[int, str]:
    """Local port -> socket inode of each TCP connection on this host to port *port*."""
    found: dict[int, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(remote.rsplit(":", 1)[1], 16) == port and inode != "0":
            found[int(local.rsplit(":", 1)[1], 16)] = inode
    return found


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process *pid* has open."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
    return inodes


# -- the world -------------------------------------------------------------------------------------


@dataclass
class World:
    fake: FakeAerion
    tap: Tap
    replicas: Replicas
    pollers: Pollers
    prefix: str
    read: Callable[[str], bytes | None]
    """Reads a key in Redis, as the test's own all-powerful client (None: no such key, or
    Redis cannot be reached)."""

    def shared_refresh_token(self) -> str | None:
        """The refresh token Redis holds for the login (plaintext: no state_key)."""
        raw = self.read(f"{self.prefix}p:refresh")
        if raw is None:
            return None
        token = json.loads(raw).get("refresh_token")
        return token if isinstance(token, str) else None

    def stored_keys(self) -> list[str]:
        """Which of the login's keys Redis holds."""
        return [what for what in ("refresh", "token") if self.read(f"{self.prefix}p:{what}")]


@contextmanager
def world(
    tmp_path: Path,
    *,
    url: str,
    prefix: str,
    read: Callable[[str], bytes | None],
    seeded: bool = False,
    delay: tuple[float, float] = (0.0, 0.0),
    poll: float = POLL,
) -> Iterator[World]:
    """The fake behind its tap on a real socket, and COUNT replicas started and ready."""
    fake = FakeAerion(
        tenants={TENANT: {USER: USER_PASSWORD}},
        ttl=TTL,
        quirks=WorldQuirks(reuse_revokes_family=True),
    )
    seed = fake.seed_refresh_token(USER, tenant=TENANT, client_id=CLIENT_ID) if seeded else ""
    tap = Tap(fake.app, before=delay[0], after=delay[1])
    with ExitStack() as stack:
        idp = stack.enter_context(serve_in_thread(tap))
        config = tmp_path / "config.yaml"
        text = CONFIG.format(prefix=prefix, lease_ttl=LEASE_TTL, idp=idp, tenant=TENANT)
        config.write_text(text + (SEED_ONLY if seeded else PASSWORD.format(user=USER)))
        config.chmod(0o600)
        env = {"TEST_REDIS_URL": url, "TEST_PASSWORD": USER_PASSWORD, "TEST_SEED": seed}
        replicas = Replicas(stack, config, env, int(idp.rsplit(":", 1)[1]))
        pollers = Pollers(fake, replicas.bases, poll)
        stack.callback(pollers.stop)
        for replica in range(COUNT):
            replicas.start(replica)
        for replica in range(COUNT):
            replicas.wait_ready(replica)
        yield World(fake, tap, replicas, pollers, prefix, read)


def reader(server: RedisServer) -> Callable[[str], bytes | None]:
    def read(key: str) -> bytes | None:
        with server.admin() as admin:
            value = admin.get(key)
            assert value is None or isinstance(value, bytes)
            return value

    return read


def restartable_reader(redis_process: RestartableRedis) -> Callable[[str], bytes | None]:
    def read(key: str) -> bytes | None:
        return reader(redis_process.server)(key) if redis_process.running else None

    return read


# -- what to expect --------------------------------------------------------------------------------


class Expectations:
    """Every expectation a test missed, reported together at the end (each names what it
    saw), with the replicas' warnings: a scenario that fails in several ways says so."""

    def __init__(self) -> None:
        self.missed: list[str] = []

    def that(self, condition: bool, message: str) -> None:
        if not condition:
            self.missed.append(message)

    def met(self, context: str = "") -> None:
        if self.missed:
            listed = "\n".join(f"- {m}" for m in self.missed)
            pytest.fail(f"{len(self.missed)} expectation(s) missed:\n{listed}\n{context}")


def refreshes_since(tap: Tap, moment: float) -> int:
    return sum(e.grant == "refresh_token" and e.arrived >= moment for e in tap.exchanges())


def at_fake(exchanges: list[Exchange]) -> list[Exchange]:
    """The requests the fake itself saw (not dropped by the tap), in order."""
    return [e for e in exchanges if e.forwarded is not None]


def gaps(exchanges: list[Exchange]) -> list[float]:
    arrivals = [e.arrived for e in at_fake(exchanges)]
    return [b - a for a, b in itertools.pairwise(arrivals)]


def reused(exchanges: list[Exchange]) -> list[tuple[Exchange, Exchange]]:
    """(first, again) for each later presentation of a refresh token already presented."""
    first: dict[str, Exchange] = {}
    pairs = []
    for exchange in at_fake(exchanges):
        token = exchange.presented
        if token is None:
            continue
        if token in first:
            pairs.append((first[token], exchange))
        else:
            first[token] = exchange
    return pairs


@dataclass(frozen=True)
class Propagation:
    delays: list[float]
    """Per token issued: seconds from its answer leaving the fake to the first answer
    showing it from the last replica (an upper bound: the polls' own lateness included)."""
    stale: list[float]
    """Per token issued: seconds from its answer leaving the fake to the last GET sent to a
    replica that then still served an older token (a lower bound, sound however late a
    starved poller runs: no poll, no evidence)."""
    missing: list[str]
    """Tokens some replica never served (a description of each)."""
    slowest: str
    """The slowest token, and when each replica first served it."""


def propagation(
    exchanges: list[Exchange], samples: list[Sample], since: float, until: float
) -> Propagation:
    """How fast each token the fake issued between *since* (the polls' start) and *until*
    (their end, minus a margin for the last polls) reached every replica."""
    issued = {e.access_token: e.answered for e in exchanges if e.access_token and e.answered}
    first_seen: dict[tuple[str, int], Sample] = {}
    for sample in samples:
        if sample.token is not None:
            first_seen.setdefault((sample.token, sample.replica), sample)
    delays: list[float] = []
    stale: list[float] = []
    missing: list[str] = []
    slowest, worst = "", -1.0
    for exchange in exchanges:
        token, answered = exchange.access_token, exchange.answered
        if token is None or answered is None or not since <= answered <= until - 0.5:
            continue
        seen = {replica: first_seen.get((token, replica)) for replica in range(COUNT)}
        absent = [replica for replica, sample in seen.items() if sample is None]
        if absent:
            missing.append(f"{exchange} never served by replicas {absent}")
            continue
        each = [sample.at - answered for sample in seen.values() if sample is not None]
        delays.append(max(each))
        # Still an older token (issued before this one, or none) after this one was issued.
        older = [
            s.sent - answered
            for s in samples
            if s.sent > answered
            and (seen_r := seen[s.replica]) is not None
            and s.sent < seen_r.sent
            and (s.token is None or issued.get(s.token, 0.0) < answered)
        ]
        stale.append(max(older, default=0.0))
        if max(each) > worst:
            worst = max(each)
            shown = ", ".join(f"{delay * 1000:.0f}" for delay in each)
            slowest = f"{exchange}: served by each replica after {shown} ms"
    return Propagation(delays, stale, missing, slowest)


def longest_unserved(samples: list[Sample], replica: int) -> float:
    """The longest time between two token answers (200) of *replica*, or from its last one
    to its last sample."""
    own = [s for s in samples if s.replica == replica]
    served = [s.at for s in own if s.status == 200]
    if not served:
        return own[-1].at - own[0].sent if own else 0.0
    stretches = [b - a for a, b in itertools.pairwise(served)]
    return max([*stretches, own[-1].at - served[-1]])


def longest_unserved_while_up(
    samples: list[Sample], lives: list[list[tuple[float, float | None]]]
) -> float:
    """:func:`longest_unserved` over each process's life from its first token on (a
    replica starting, or dead, serves nothing: that is not what is measured)."""
    longest = 0.0
    for replica, spans in enumerate(lives):
        for start, end in spans:
            own = [
                s
                for s in samples
                if s.replica == replica and start <= s.sent and (end is None or s.sent < end)
            ]
            first = next((i for i, s in enumerate(own) if s.status == 200), None)
            if first is not None:
                longest = max(longest, longest_unserved(own[first:], replica))
    return longest


def figures(delays: list[float]) -> str:
    if not delays:
        return "no tokens"
    ordered = sorted(delays)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{len(delays)} tokens, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
        f" max {ordered[-1] * 1000:.0f} ms (polls {POLL * 1000:.0f} ms apart)"
    )


def served_summary(samples: list[Sample]) -> str:
    lines = []
    for replica in range(COUNT):
        own = [s for s in samples if s.replica == replica]
        statuses: dict[str, int] = {}
        for s in own:
            key = f"{s.status}/{s.state}" if s.status == 200 else str(s.status)
            statuses[key] = statuses.get(key, 0) + 1
        lines.append(
            f"replica {replica}: {len(own)} GETs {statuses},"
            f" longest without a token {longest_unserved(samples, replica):.2f} s"
        )
    return "\n".join(lines)


def idp_summary(exchanges: list[Exchange], since: float) -> str:
    return "\n".join(
        f"  {e.arrived - since:+7.3f} s {e}"
        + (f" -> {e.access_token[:8]}" if e.access_token else "")
        for e in exchanges
    )


def check_one_login(
    check: Expectations,
    w: World,
    exchanges: list[Exchange],
    samples: list[Sample],
    *,
    logins: int,
    polled_from: float,
    stopped: float,
) -> Propagation:
    """The shared expectations of a login that three replicas share in steady state."""
    seen = at_fake(exchanges)
    check.that(
        len(seen) == len(w.fake.token_requests()),
        f"the tap passed on {len(seen)} token requests, the fake saw"
        f" {len(w.fake.token_requests())}",
    )
    failed = [str(e) for e in seen if e.status != 200]
    check.that(not failed, f"token requests failed (invalid_grant?): {failed}")
    again = [str(b) for _, b in reused(exchanges)]
    check.that(not again, f"refresh tokens presented twice: {again}")
    latest = w.fake.issued_refresh_tokens[-1]
    check.that(w.fake.is_refresh_token_valid(latest), "the login died (its family is revoked)")
    passwords = sum(e.grant == "password" for e in seen)
    check.that(passwords == logins, f"{passwords} password logins, expected {logins}")
    between = gaps(exchanges)
    too_close = [round(g, 3) for g in between if g < SHORTEST_CYCLE]
    check.that(
        not too_close,
        f"more than one token request in a cycle: requests {too_close} s apart"
        f" (a cycle is at least {PLANNED_CYCLE:.2f} s)",
    )
    polled = [e for e in seen if e.arrived >= polled_from]
    most = 1 + (stopped - polled_from) / (PLANNED_CYCLE - 0.1)
    check.that(
        len(polled) <= most,
        f"{len(polled)} token requests in {stopped - polled_from:.1f} s: more than one per cycle",
    )
    too_far = [round(g, 3) for g in between if g > TTL]
    check.that(not too_far, f"a cycle without a token request: requests {too_far} s apart")
    not_served = [s for s in samples if s.status != 200]
    check.that(
        not not_served,
        f"{len(not_served)} GETs without a token, first {not_served[:3]}",
    )
    invalid = [s for s in samples if s.status == 200 and s.state != VALID]
    check.that(not invalid, f"{len(invalid)} tokens served that the fake refuses: {invalid[:3]}")
    spread = propagation(exchanges, samples, polled_from, stopped)
    check.that(not spread.missing, f"tokens not served by every replica: {spread.missing}")
    late = max(spread.stale, default=0.0)
    check.that(
        late < PROPAGATION_LIMIT,
        f"a replica still served an older token {late:.3f} s after a new one was issued"
        f" (first served by all after: {figures(spread.delays)})",
    )
    return spread


def cycles(tmp_path: Path, redis_server: RedisServer, *, seeded: bool) -> None:
    """Tests 1 and 2: three replicas over CYCLES refresh cycles."""
    begun = time.monotonic()
    place = redis_server.place()
    with world(
        tmp_path, url=place.url, prefix=place.prefix, read=reader(redis_server), seeded=seeded
    ) as w:
        started = time.monotonic()
        w.pollers.start()
        with contextlib.suppress(AssertionError):  # an expectation below says so
            wait_for(
                lambda: refreshes_since(w.tap, started) >= CYCLES,
                timeout=CYCLES * TTL,
                interval=0.1,
            )
        stopped = time.monotonic()
        samples = w.pollers.stop()
        exchanges = w.tap.exchanges()
        stored = w.stored_keys()
        check = Expectations()
        refreshed = refreshes_since(w.tap, started)
        check.that(
            refreshed >= CYCLES,
            f"only {refreshed} refreshes in {stopped - started:.1f} s, expected {CYCLES}",
        )
        spread = check_one_login(
            check,
            w,
            exchanges,
            samples,
            logins=0 if seeded else 1,
            polled_from=started,
            stopped=stopped,
        )
        if seeded:
            first = exchanges[0].presented if exchanges else None
            check.that(
                first == w.fake.issued_refresh_tokens[0],
                "the first request did not present the seed",
            )
        check.that(stored == ["refresh", "token"], f"Redis holds only {stored}")
        arrivals = w.replicas.arrivals()
        check.that(
            all(announced > 0 for _, announced, _ in arrivals),
            f"a replica took no token from an announcement (own/announced/read in the lease:"
            f" {arrivals}): the others' tokens reach it only at its own refresh",
        )
        print(
            f"\n{'seeded' if seeded else 'password'}: {len(at_fake(exchanges))} token requests"
            f" in {stopped - started:.1f} s ({refreshes_since(w.tap, started)} refreshes while"
            f" polled), {len(samples)} GETs; propagation to all {COUNT}: {figures(spread.delays)};"
            f" slowest {spread.slowest}; an older token seen served at most"
            f" {max(spread.stale, default=0.0) * 1000:.0f} ms after a new one;"
            f" tokens per replica (own/announced/read in the lease): {arrivals};"
            f" wall {time.monotonic() - begun:.1f} s"
        )
        check.met(
            f"{served_summary(samples)}\nthe fake saw:\n{idp_summary(exchanges, started)}\n"
            f"{w.replicas.warnings()}"
        )


def test_three_replica_processes_share_one_password_login(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    cycles(tmp_path, redis_server, seeded=False)


def test_three_replica_processes_keep_one_seeded_refresh_token_alive(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    cycles(tmp_path, redis_server, seeded=True)


# -- SIGKILL rounds -----------------------------------------------------------------------------

ROUNDS = 20
KILL_SEED = int(os.environ.get("BROKER_TEST_KILL_SEED", "1414"))
"""The seed of the rounds' random choices (printed; set the variable to repeat a run's)."""
HOLD = (0.1, 0.1)
"""Seconds the tap holds each token request before the fake sees it, and its answer after:
a window to kill the replica in."""
IN_FLIGHT_ROUNDS = 8
"""Of the rounds (in an order the seed shuffles), those that wait for a token request and
kill its sender while it is in flight; the others kill at any moment. Each costs about
LEASE_TTL (the others wait for the dead one's lease): fewer than half keeps the test near
40 s on 2 shared cores."""
KILL_POLL = 0.05
"""Seconds between two GETs of one poller in the kill rounds (no delays measured: less load
on the 2 cores, which the restarts keep busy)."""
SAVE_WINDOW = 0.5
"""Seconds after its answer within which a holder killed before the rotated refresh token
reached Redis explains that it was lost (a save takes milliseconds; the rest is load)."""
REUSE_WINDOW = LEASE_TTL + 3.0
"""Seconds after a kill within which a survivor presents the refresh token the dead holder
had rotated at the identity provider (the lease frees within LEASE_TTL)."""


@dataclass
class Kill:
    round: int
    how: str
    replica: int
    pid: int
    started: float
    """When the killed process had been started."""
    at: float
    ports: set[int]
    """Its connections to the identity provider when it was killed."""
    shared: str | None
    """The refresh token Redis held right after the kill."""

    def sent(self, exchanges: list[Exchange]) -> list[Exchange]:
        """The token requests the killed process had sent."""
        return [
            e for e in exchanges if e.port in self.ports and self.started <= e.arrived < self.at
        ]

    def in_flight(self, exchanges: list[Exchange]) -> Exchange | None:
        sent = [e for e in self.sent(exchanges) if e.pending_at(self.at)]
        return sent[-1] if sent else None


def explain(
    first: Exchange, again: Exchange, kills: list[Kill], exchanges: list[Exchange]
) -> Kill | None:
    """The kill that explains presenting *first*'s refresh token again: its sender was
    killed after sending it, before the answer (the rotated refresh token) reached it, or
    just after, before that reached Redis; and *again* came soon after a kill (that one, or
    a later one that lost the answer to the login that followed, so the old one was all a
    replica had)."""
    for kill in kills:
        sent = kill.sent(exchanges)
        if not sent or sent[-1] is not first or not kill.at < again.arrived:
            continue
        lost = first.answered is None or first.answered > kill.at
        unsaved = (
            not lost
            and kill.at - (first.answered or 0.0) <= SAVE_WINDOW
            and kill.shared != first.refresh_token
        )
        if not lost and not unsaved:
            continue
        latest = max(k.at for k in kills if k.at < again.arrived)
        return kill if again.arrived - latest <= REUSE_WINDOW else None
    return None


def login_explained(login: Exchange, exchanges: list[Exchange], kills: list[Kill]) -> bool:
    """Whether a password login after the first is the primary grant taking over, as it
    should: since the previous login a refresh was refused (a reuse revoked the login), or
    a kill lost a login (its answer, or the request itself: no refresh token was saved, and
    a replica that had none logs in)."""
    logins = [e for e in at_fake(exchanges) if e.grant == "password" and e.arrived < login.arrived]
    previous = logins[-1].arrived if logins else 0.0
    refused = any(
        e.status != 200 and previous < e.arrived < login.arrived for e in at_fake(exchanges)
    )
    lost = any(
        previous <= kill.at < login.arrived
        and (hit := kill.in_flight(exchanges)) is not None
        and hit.grant == "password"
        for kill in kills
    )
    return refused or lost


def force_refresh(base: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(f"{base}/token/p/refresh", timeout=5)


class KillOnArrival:
    """Armed on the tap: finds the sender of the next token request and kills it *offset*
    seconds after its arrival, on the fake's event loop (see :meth:`Tap.arm`)."""

    def __init__(self, replicas: Replicas, offset: float) -> None:
        self._replicas = replicas
        self._offset = offset
        self.done = threading.Event()
        self.exchange: Exchange | None = None
        self.victim: int | None = None
        self.pid = 0
        self.ports: set[int] = set()
        self.at = 0.0

    def __call__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.victim = self._replicas.owner(exchange.port)
        if self.victim is None:
            self.done.set()
            return
        self.pid = self._replicas.current(self.victim).proc.pid
        self.ports = self._replicas.idp_ports(self.victim)
        # On the loop's clock (time.monotonic(), as the arrival's): due before the holds end.
        asyncio.get_running_loop().call_at(exchange.arrived + self._offset, self._kill)

    def _kill(self) -> None:
        self.at = self._replicas.signal_kill(self.pid)
        self.done.set()


def kill_round(
    w: World, rng: random.Random, number: int, in_flight: bool, pool: ThreadPoolExecutor
) -> Kill:
    """Kill one replica, *in_flight* the sender of the next token request while it is in
    flight, else the one with a request in flight if any, and start it again (not waiting
    for it)."""
    replicas, tap = w.replicas, w.tap
    if in_flight:
        pause, trigger = rng.uniform(0, 0.3), rng.randrange(COUNT)
        offset = rng.uniform(0, sum(HOLD) - 0.02)
        how = f"in flight (pause {pause:.3f} s, forced on {trigger}, aimed {offset:.3f} s)"
        armed = KillOnArrival(replicas, offset)
        before = tap.count()
        tap.arm(armed)
        time.sleep(pause)  # a random moment to ask for a new token, unless one is asked for
        if tap.count() == before:
            pool.submit(force_refresh, replicas.bases[trigger])
        if not armed.done.wait(10):
            pytest.fail(f"round {number}: no token request within 10 s")
        victim, pid, ports, at = armed.victim, armed.pid, armed.ports, armed.at
        if victim is not None:
            started = replicas.started[victim]
            replicas.reap(victim, at)
    else:
        pause = rng.uniform(0, 1.0)
        time.sleep(pause)
        how = f"any moment (pause {pause:.3f} s)"
        pending = [e for e in tap.exchanges() if e.pending_at(time.monotonic())]
        last = pending[-1] if pending else next(reversed(tap.exchanges()), None)
        victim = replicas.owner(last.port) if last is not None else None
        if victim is None:
            # The last sender is gone already: one of the replicas that serve (not one starting).
            up = [r for r in range(COUNT) if w.pollers.serving_since(r, replicas.started[r])]
            victim = rng.choice(up or [r for r in range(COUNT) if replicas.alive(r)])
            how += ", its sender gone: a random replica"
        pid, started = replicas.current(victim).proc.pid, replicas.started[victim]
        ports = replicas.idp_ports(victim)
        at = replicas.kill(victim)
    if victim is None:
        pytest.fail(f"round {number}: {how}: the sender of {armed.exchange} is no replica")
    kill = Kill(number, how, victim, pid, started, at, ports, w.shared_refresh_token())
    replicas.start(victim)
    hit = kill.in_flight(tap.exchanges())
    late = f", killed {at - hit.arrived:.3f} s after its arrival" if hit is not None else ""
    print(f"round {number}: {how}: killed replica {victim} ({pid}); in flight: {hit or '-'}{late}")
    if hit is not None:
        # The others wait for the dead one's lease: let one of them get a token first.
        wait_for(
            lambda: any(e.status == 200 and e.arrived > at for e in tap.exchanges()),
            timeout=LEASE_TTL + 10,
            interval=0.02,
        )
    return kill


def test_sigkill_rounds_never_serve_an_expired_token_and_keep_the_login(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    begun = time.monotonic()
    rng = random.Random(KILL_SEED)
    print(
        f"\nkill rounds: seed {KILL_SEED} (BROKER_TEST_KILL_SEED={KILL_SEED} repeats the choices)"
    )
    place = redis_server.place()
    with (
        world(
            tmp_path,
            url=place.url,
            prefix=place.prefix,
            read=reader(redis_server),
            delay=HOLD,
            poll=KILL_POLL,
        ) as w,
        ThreadPoolExecutor(2) as pool,
    ):
        started = time.monotonic()
        w.pollers.start()
        modes = [True] * IN_FLIGHT_ROUNDS + [False] * (ROUNDS - IN_FLIGHT_ROUNDS)
        rng.shuffle(modes)
        kills = [kill_round(w, rng, n, mode, pool) for n, mode in enumerate(modes)]
        for replica in range(COUNT):
            w.replicas.wait_ready(replica)
        alive = wait_for(
            lambda: all(
                (s := w.pollers.latest(r)) is not None
                and s.sent > kills[-1].at
                and s.state == VALID
                for r in range(COUNT)
            ),
            timeout=START_PATIENCE,
            interval=0.05,
        )
        stopped = time.monotonic()
        samples = w.pollers.stop()
        exchanges = w.tap.exchanges()
        login_alive = w.fake.is_refresh_token_valid(w.fake.issued_refresh_tokens[-1])
        lives = w.replicas.lives
        context = (
            f"{served_summary(samples)}\nthe fake saw:\n{idp_summary(exchanges, started)}\n"
            f"{w.replicas.warnings()}"
        )

    check = Expectations()
    check.that(alive, "not every replica serves a valid token after the rounds")
    check.that(login_alive, "the login is dead after the rounds (its family revoked)")
    # Never a token the fake says is expired, nor one it does not know.
    bad = [s for s in samples if s.state in (EXPIRED, UNKNOWN)]
    check.that(not bad, f"{len(bad)} expired or unknown tokens served: {bad[:3]}")

    # Every refresh token presented twice was presented first by a holder killed with its
    # request in flight (the identity provider rotated it, the answer was lost) or before
    # the rotated one reached Redis; the survivor's second try is refused, revokes the
    # login, and the survivor logs in again with the password (the primary grant).
    reuses = reused(exchanges)
    explained = [(first, again, explain(first, again, kills, exchanges)) for first, again in reuses]
    unexplained = [f"{first} then {again}" for first, again, kill in explained if kill is None]
    check.that(not unexplained, f"refresh tokens presented twice, no kill explains: {unexplained}")
    seen = at_fake(exchanges)
    refused = {e.number for e in seen if e.status != 200}
    expected_refusals = {again.number for _, again in reuses}
    other = [str(e) for e in seen if e.number in refused - expected_refusals]
    check.that(not other, f"token requests failed other than by a reuse: {other}")
    logins = [e for e in seen if e.grant == "password"]
    relogins = len(logins) - 1
    odd = [str(e) for e in logins[1:] if not login_explained(e, exchanges, kills)]
    check.that(not odd, f"logins after the first that no refusal or lost login explains: {odd}")
    # A token the fake revoked (a reuse revoked its whole login) is served only in the moment
    # between that reuse and the survivor's new login reaching the replicas.
    windows = []
    for _, again in reuses:
        after = [
            e.answered
            for e in seen
            if e.status == 200 and e.answered is not None and e.arrived > again.arrived
        ]
        windows.append(
            (
                again.forwarded or again.arrived,
                (min(after) if after else stopped) + PROPAGATION_LIMIT,
            )
        )
    revoked = [s for s in samples if s.state == REVOKED]
    outside = [s for s in revoked if not any(a <= s.sent and s.at <= b for a, b in windows)]
    check.that(
        not outside, f"{len(outside)} revoked tokens served outside a reuse's moment: {outside[:3]}"
    )

    hits = [(kill, kill.in_flight(exchanges)) for kill in kills]
    in_flight = [(kill, e) for kill, e in hits if e is not None]
    before_idp = [k for k, e in in_flight if e.forwarded is None or e.forwarded > k.at]
    answer_lost = [k for k, e in in_flight if e.forwarded is not None and e.forwarded <= k.at]
    check.that(
        len(in_flight) >= IN_FLIGHT_ROUNDS,
        f"only {len(in_flight)} of {ROUNDS} rounds killed a replica with its request in flight"
        f" ({IN_FLIGHT_ROUNDS} aimed at one)",
    )
    longest = longest_unserved_while_up(samples, lives)
    print(
        f"{ROUNDS} rounds: {len(in_flight)} killed a request in flight ({len(before_idp)} before"
        f" the fake saw it, {len(answer_lost)} after: answer lost); {len(reuses)} refresh tokens"
        f" presented again, {len(reuses) - len(unexplained)} explained by a kill; {relogins}"
        f" logins after the first; {len(revoked)} GETs served a revoked token, {len(bad)} an"
        f" expired one; longest a live replica served no token: {longest:.2f} s;"
        f" {len(seen)} token requests; wall {time.monotonic() - begun:.1f} s"
    )
    check.met(context)


# -- Redis away ---------------------------------------------------------------------------------

OUTAGE = 2 * TTL
"""Seconds Redis is away: longer than a token lives."""
CONVERGE = 3 * TTL
"""Seconds after Redis is back within which the replicas share one login again."""
STEADY = 4
"""Token requests then watched, each in a cycle of its own."""
UNSERVED_LIMIT = TTL
"""The longest a replica with a password may serve no token, Redis away or not."""


def outage(w: World, away: Callable[[], None], back: Callable[[], None], what: str) -> None:
    """Tests 4 and 5: Redis *away* for OUTAGE seconds, then *back*; the expectations."""
    begun = time.monotonic()
    w.pollers.start()
    wait_for(lambda: refreshes_since(w.tap, begun) >= 2, timeout=4 * TTL, interval=0.05)
    away()
    gone = time.monotonic()
    time.sleep(OUTAGE)  # the outage itself: nothing to wait for
    returning = time.monotonic()
    back()
    returned = time.monotonic()
    # Not an expectation, a finding: is the lease held before any replica asks for it (a
    # command that a replica gave up on during the outage, delivered late)?
    lease, held = f"{w.prefix}p:lease", None
    while held is None and time.monotonic() < returned + 0.3:
        if w.read(lease) is not None:
            held = time.monotonic() - returned
        time.sleep(0.01)

    def converged() -> bool:
        latest = [w.pollers.latest(r) for r in range(COUNT)]
        tokens = {s.token for s in latest if s is not None and s.sent > returned}
        return len(tokens) == 1 and None not in tokens and w.stored_keys() == ["refresh", "token"]

    with contextlib.suppress(AssertionError):
        wait_for(converged, timeout=CONVERGE, interval=0.05)
    settled = time.monotonic()
    steady_from = w.tap.count()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: w.tap.count() >= steady_from + STEADY, timeout=STEADY * TTL, interval=0.05)
    stopped = time.monotonic()
    samples = w.pollers.stop()
    exchanges = w.tap.exchanges()
    stored = w.stored_keys()

    check = Expectations()
    bad = [s for s in samples if s.state in (EXPIRED, UNKNOWN)]
    check.that(not bad, f"{len(bad)} expired or unknown tokens served: {bad[:3]}")
    unserved = {r: longest_unserved(samples, r) for r in range(COUNT)}
    check.that(
        max(unserved.values()) <= UNSERVED_LIMIT,
        f"a replica served no token for longer than a token lives ({TTL:g} s): longest per"
        f" replica {', '.join(f'{v:.2f} s' for v in unserved.values())}",
    )
    check.that(
        settled - returned < CONVERGE, f"not one token on every replica {CONVERGE:g} s after {what}"
    )
    steady = exchanges[steady_from:]
    check.that(
        len(steady) >= STEADY,
        f"only {len(steady)} token requests in the {STEADY * TTL:g} s after converging",
    )
    close = [round(g, 3) for g in gaps(steady) if g < SHORTEST_CYCLE]
    check.that(
        not close, f"after converging, more than one token request in a cycle: {close} s apart"
    )
    failed = [str(e) for e in at_fake(steady) if e.status != 200]
    check.that(not failed, f"after converging, token requests failed: {failed}")
    spread = propagation(steady, samples, settled, stopped)
    check.that(
        not spread.missing,
        f"after converging, tokens not served by every replica: {spread.missing}",
    )
    check.that(stored == ["refresh", "token"], f"Redis holds only {stored} after {what}")
    again = [f"{a} then {b}" for a, b in reused(exchanges)]
    check.that(not again, f"refresh tokens presented twice (each revokes a login): {again}")
    during = [e for e in exchanges if gone <= e.arrived < returning]
    after = [e.arrived - returned for e in exchanges if e.arrived >= returning]
    lease_seen = f"{held:.2f} s after" if held is not None else "not within 0.3 s of"
    first_after = f"{after[0]:.2f} s" if after else "none"
    print(
        f"\n{what}: {OUTAGE:g} s; token requests during it {len(during)}"
        f" ({', '.join(sorted({e.grant for e in during})) or 'none'}); one token everywhere"
        f" {settled - returned:.2f} s after; {len(steady)} requests then, gaps"
        f" {[round(g, 2) for g in gaps(steady)]}; longest without a token"
        f" {max(unserved.values()):.2f} s; propagation {figures(spread.delays)};"
        f" Redis holds {stored}; the lease held {lease_seen} its return, the first token"
        f" request {first_after} after; wall {time.monotonic() - begun:.1f} s"
    )
    check.met(
        f"{served_summary(samples)}\nthe fake saw (Redis away at +{gone - begun:.3f} s, back"
        f" at +{returned - begun:.3f} s):\n{idp_summary(exchanges, begun)}\n{w.replicas.warnings()}"
    )


def test_redis_stopped_longer_than_a_token_lives_then_started_empty(tmp_path: Path) -> None:
    with restartable_redis_server(tmp_path / "redis-1") as redis_process:

        def start_empty() -> None:
            redis_process.start(tmp_path / "redis-2")  # a new directory: nothing stored

        prefix = "outage:"
        with world(
            tmp_path, url=redis_process.url, prefix=prefix, read=restartable_reader(redis_process)
        ) as w:
            outage(
                w,
                redis_process.stop,
                start_empty,
                "Redis stopped, started empty",
            )


def test_redis_stalled_longer_than_a_token_lives(tmp_path: Path, redis_server: RedisServer) -> None:
    place = redis_server.place()
    with StallingProxy(redis_server.port) as proxy:
        url = place.url.replace(f":{redis_server.port}/", f":{proxy.port}/")
        with world(tmp_path, url=url, prefix=place.prefix, read=reader(redis_server)) as w:
            outage(w, proxy.stall, proxy.resume, "Redis stalled")
            print(f"proxy: {proxy.accepted} connections, {proxy.accepted_stalled} while stalled")


ONCE = Retry(NoBackoff(), 0)
"""redis-py 8 retries a command 10 times by default: here a timeout is the answer."""


def test_the_stalling_proxy_forwards_holds_and_delivers_late(redis_server: RedisServer) -> None:
    """tests/tcpproxy.py itself: it forwards; stalled, it answers nothing on an open
    connection or a new one; resumed, it delivers what it held (a command its client gave
    up on is executed late, as after a healed partition)."""
    key = f"tcpproxy-{os.getpid()}-{time.monotonic_ns()}"
    with StallingProxy(redis_server.port) as proxy, redis_server.admin() as admin:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.3, retry=ONCE)
        try:
            assert client.ping()
            proxy.stall()
            with pytest.raises(redis.TimeoutError):
                client.set(key, b"late")
            fresh = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.3, retry=ONCE)
            with pytest.raises(redis.TimeoutError):
                fresh.ping()
            fresh.close()
            assert admin.get(key) is None
            assert proxy.accepted_stalled >= 1
            proxy.resume()
            wait_for(lambda: admin.get(key) == b"late", timeout=5)
            assert client.ping()
        finally:
            client.close()
            admin.delete(key)
