"""A Redis the broker cannot use is an expected failure, never a reason to race another
replica for the shared refresh token:

- a provider living on a seeded refresh token alone waits for Redis: each token request ends
  as a transient ``store_unavailable`` (one log line naming the store, no traceback), the
  current token is served until it expires, retries back off, and the broker recovers by
  itself when Redis is back;
- a provider with a primary grant (here a password) logs in on its own once its token is in
  the last part of its life, never with the shared refresh token, so callers never go
  without a token; when Redis is back the next refresh is under the lease again, with the
  refresh token Redis holds.

One broker in-process on the fake clock (tests/inprocess.py) on a real redis-server; the
outage is its Redis user taken away (ACL DELUSER, which also closes its connections: every
command fails to authenticate) and given back. See tests/test_replicas.py for why the test
waits for the Redis work in flight (:func:`tests.test_replicas.quiet`) after each step.
"""

from __future__ import annotations

import pytest

from broker.core.errors import FailureCode, FailureKind
from broker.fakes import FakeOAuth2
from tests.inprocess import IdPs, in_process, process_log
from tests.redisserver import RedisPlace, RedisServer
from tests.support import FakeClock, settings_from
from tests.test_replicas import (
    IDP,
    PASSWORD,
    PROVIDER,
    SEED_ONLY,
    STORE,
    manager,
    quiet,
    reuse_detecting_fake,
    spellings,
)

pytestmark = pytest.mark.anyio

TTL = 30.0
"""The fake's token lifetime (fake seconds): the first refresh is due after about 20."""
STEP = 0.5
"""Fake seconds between two looks at what the broker serves."""
BACKOFF_MAX = 300.0
"""The default ``refresh.backoff_max``: the longest a retry can be away."""


async def test_a_seeded_provider_waits_out_a_redis_outage_and_heals(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    fake = FakeOAuth2(
        clients={"app": "app-secret"},
        users={"alice": "alice-pw"},
        ttl=TTL,
        rotate_refresh_tokens=True,
        now=clock.wall,
    )
    place: RedisPlace = redis_server.place()
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    seed = fake.seed_refresh_token("alice")
    settings = settings_from(config + SEED_ONLY.format(seed=seed))
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    with process_log(settings) as log:
        async with in_process(settings, idps) as broker:
            await quiet([broker])
            state = manager(broker).providers["p"]
            first = (await broker.get("/token/p")).json()["access_token"]
            expires_at = state.token.expires_at if state.token is not None else 0.0
            sent_before = len(fake.token_requests())
            assert sent_before == 1

            place.remove()
            # Until the token runs out: every answer is the current token, flagged as
            # stale once a refresh has failed; afterwards 503, never an expired token.
            answers: list[tuple[float, int, str | None, str | None]] = []
            while clock.monotonic() < expires_at + 5:
                answer = await broker.get("/token/p")
                token = answer.json().get("access_token") if answer.status_code == 200 else None
                flag = answer.headers.get("X-Broker-Refresh-Failed")
                answers.append((clock.monotonic(), answer.status_code, token, flag))
                await clock.advance(STEP)
                await quiet([broker])
            failures_in_outage = state.failures
            error = state.last_error
            providers = (await broker.get("/providers")).json()["providers"]
            refused = await broker.get("/token/p")
            outage_log = log.getvalue()

            place.restore()
            back_at = clock.monotonic()
            while state.refreshes < 2:  # the first token, then the one after the outage
                assert clock.monotonic() - back_at <= BACKOFF_MAX, "no recovery"
                await clock.advance(STEP)
                await quiet([broker])
            recovered_in = clock.monotonic() - back_at
            healed = await broker.get("/token/p")
            after_providers = (await broker.get("/providers")).json()["providers"]

    # No token request reached the identity provider during the outage: without the lease
    # (or the refresh token Redis holds) one could race another replica.
    assert error is not None
    assert (error.code, error.kind) == (FailureCode.STORE_UNAVAILABLE, FailureKind.TRANSIENT)
    assert error.message.startswith("the token store cannot be used: Redis at 127.0.0.1:")
    assert "taking p's lease failed" in error.message
    served = [a for a in answers if a[1] == 200]
    assert {a[2] for a in served} == {first}
    assert all(at < expires_at for at, *_ in served)
    assert all(status == 503 for at, status, *_ in answers if at >= expires_at)
    assert served[-1][3] == "store_unavailable"
    assert refused.status_code == 503
    assert refused.json()["error"] == "token_unavailable"
    assert "[store_unavailable]" in refused.json()["message"]
    assert providers["p"]["last_error"]["code"] == "store_unavailable"
    assert providers["p"]["state"] == "failing"
    # Backoff, not a flood: retries 1 s, 2 s, 4 s ... apart (full jitter) over the ~15 s
    # from the first due refresh to the end of the outage.
    assert 2 <= failures_in_outage <= 10

    # One WARNING line per failed request, naming the store, and nothing else above INFO.
    lines = outage_log.splitlines()
    failed = [line for line in lines if "[store_unavailable]" in line]
    assert len(failed) == failures_in_outage
    assert all("WARNING" in line and "Redis at 127.0.0.1:" in line for line in failed)
    # And the announcement listener's own: one line per failed try to listen again, backing
    # off 0.5 s, 1 s, 2 s ... (at most 30 s apart), not a flood.
    listening = [line for line in lines if "announcements failed" in line]
    assert 1 <= len(listening) <= 8
    assert all("WARNING" in line and "Redis at 127.0.0.1:" in line for line in listening)
    warned = [line for line in lines if "WARNING" in line or "ERROR" in line]
    assert [line for line in warned if line not in listening] == failed
    assert "Traceback" not in outage_log
    assert "internal_error" not in outage_log
    for secret in (place.url, *spellings(place.password)):
        assert secret not in outage_log

    # Back: one refresh with the refresh token Redis holds, and all is well again.
    assert recovered_in <= BACKOFF_MAX
    assert healed.status_code == 200
    assert healed.headers.get("X-Broker-Refresh-Failed") is None
    assert fake.is_access_token_valid(healed.json()["access_token"])
    assert [r.form.get("grant_type") for r in fake.token_requests() if r.form] == [
        "refresh_token",
        "refresh_token",
    ]
    assert after_providers["p"]["state"] == "ready"
    assert after_providers["p"]["consecutive_failures"] == 0


async def test_a_provider_with_a_password_logs_in_alone_as_its_token_runs_out_and_rejoins(
    redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    fake = reuse_detecting_fake(clock)
    place: RedisPlace = redis_server.place()
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    settings = settings_from(config + PASSWORD)
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    with process_log(settings) as log:
        async with in_process(settings, idps) as broker:
            await quiet([broker])
            state = manager(broker).providers["p"]
            shared = state.refresh_token
            assert shared is not None

            place.remove()
            began = clock.monotonic()
            # Two token lifetimes without Redis: every answer a token the identity provider
            # takes at that moment, never a 503.
            answers: list[tuple[int, bool]] = []
            while clock.monotonic() < began + 2 * TTL:
                answer = await broker.get("/token/p")
                token = answer.json().get("access_token") if answer.status_code == 200 else None
                answers.append(
                    (answer.status_code, token is not None and fake.is_access_token_valid(token))
                )
                await clock.advance(STEP)
                await quiet([broker])
            during = fake.token_requests()[1:]
            metrics_out = (await broker.get("/metrics")).text
            store_out = (await broker.get("/providers")).json()["store"]
            ready_out = await broker.get("/readyz")

            place.restore()
            back = len(fake.token_requests())
            while len(fake.token_requests()) == back:
                assert clock.monotonic() - began <= 4 * TTL, "no refresh after Redis came back"
                await clock.advance(STEP)
                await quiet([broker])
            await quiet([broker])
            healed = await broker.get("/token/p")
            metrics_back = (await broker.get("/metrics")).text
            store_back = (await broker.get("/providers")).json()["store"]
            outage_log = log.getvalue()

    assert answers
    assert all(answer == (200, True) for answer in answers), answers
    # Alone: one password login as the first token ran out, then (the second time) our own
    # refresh token, which no other broker knows. Never the shared one without the lease.
    grants = [
        ((r.form or {}).get("grant_type"), (r.form or {}).get("refresh_token")) for r in during
    ]
    assert grants[0] == ("password", None)
    assert 2 <= len(grants) <= 3
    assert all(rt != shared for _, rt in grants)
    assert 'broker_store_alone_logins_total{provider="p"}' in metrics_out
    assert "broker_store_up 0.0" in metrics_out
    assert "the token runs out: logging in without it" in outage_log
    # The status says where the store stands, never its URL or password; readiness is the
    # tokens', not Redis's.
    assert store_out["backend"] == "redis"
    assert store_out["connected"] is False
    assert store_out["where"].startswith("Redis at 127.0.0.1:")
    assert store_out["last_error"]["message"].startswith(store_out["where"])
    assert store_out["leases_held"] == []
    assert ready_out.status_code == 200
    assert ready_out.json()["store"] == {"backend": "redis", "connected": False}
    for secret in (place.url, *spellings(place.password)):
        assert secret not in str(store_out)
    assert "Traceback" not in outage_log

    # Back: the first request is under the lease again, with the refresh token Redis holds;
    # its answer is served and published.
    rejoined = fake.token_requests()[back]
    form = rejoined.form or {}
    assert (form.get("grant_type"), form.get("refresh_token")) == (
        "refresh_token",
        shared,
    )
    assert healed.status_code == 200
    assert fake.is_access_token_valid(healed.json()["access_token"])
    assert "broker_store_up 1.0" in metrics_back
    assert store_back["connected"] is True
    assert place.get(f"{place.prefix}p:token") is not None


async def test_backoff_never_carries_a_retry_past_the_start_of_the_last_part(
    redis_server: RedisServer,
) -> None:
    """An hour-long token, Redis gone from before its first refresh: retries back off up to
    minutes apart, but never later than the start of the last minute (``margin``), where
    the broker logs in alone; so the token never runs out."""
    clock = FakeClock()
    fake = FakeOAuth2(
        clients={"app": "app-secret"}, users={"alice": "alice-pw"}, ttl=3600.0, now=clock.wall
    )
    place: RedisPlace = redis_server.place()
    config = STORE.format(url=place.url, prefix=place.prefix) + PROVIDER.format(idp=IDP)
    idps = IdPs(clock)
    idps.serve(IDP, fake.app)
    async with in_process(settings_from(config + PASSWORD), idps) as broker:
        await quiet([broker])
        state = manager(broker).providers["p"]
        first = state.token
        assert first is not None
        place.remove()
        statuses: set[int] = set()
        while state.token is first:
            assert clock.monotonic() < first.expires_at, "the token ran out"
            statuses.add((await broker.get("/token/p")).status_code)
            await clock.advance(5.0)
            await quiet([broker])
        alone_at = clock.monotonic()
    assert statuses == {200}
    # Retried with backoff (not every 5 s), and the last retry before the login alone came
    # at the start of the last minute of serving, not minutes later.
    assert 5 <= state.failures <= 15
    assert first.serve_until - 60 <= alone_at <= first.serve_until - 60 + 5
