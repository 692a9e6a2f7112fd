"""A Redis the broker cannot use is an expected failure: the token request ends as a
transient ``store_unavailable`` (one log line naming the store, no traceback), the current
token is served until it expires, retries back off, and the broker recovers by itself when
Redis is back.

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
from tests.test_replicas import IDP, PASSWORD, PROVIDER, STORE, manager, quiet, spellings

pytestmark = pytest.mark.anyio

TTL = 30.0
"""The fake's token lifetime (fake seconds): the first refresh is due after about 20."""
STEP = 0.5
"""Fake seconds between two looks at what the broker serves."""
BACKOFF_MAX = 300.0
"""The default ``refresh.backoff_max``: the longest a retry can be away."""


async def test_a_redis_outage_is_a_transient_store_unavailable_and_heals(
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
    settings = settings_from(config + PASSWORD)
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
        "password",
        "refresh_token",
    ]
    assert after_providers["p"]["state"] == "ready"
    assert after_providers["p"]["consecutive_failures"] == 0
