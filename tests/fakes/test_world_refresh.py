"""Wider world, refresh side: revoke_previous_access_on_refresh and reuse_revokes_family.

Every fake (HIRO through /refresh and through the 6.6 /token) over real HTTP, each switch off
(the kind behaviour the fakes always had) and on.
"""

from __future__ import annotations

import pytest

from tests.fakes.helpers import Clock, Connect
from tests.fakes.world import FLOWS, ROTATING, Flow

TTL = 100.0


@pytest.fixture(params=FLOWS, ids=[f.name for f in FLOWS])
def flow(request: pytest.FixtureRequest) -> Flow:
    param: Flow = request.param
    return param


@pytest.fixture(params=ROTATING, ids=[f.name for f in ROTATING])
def rotating(request: pytest.FixtureRequest) -> Flow:
    param: Flow = request.param
    return param


# -- revoke_previous_access_on_refresh -------------------------------------------------------


@pytest.mark.parametrize("switch", [False, True], ids=["off", "on"])
def test_a_refresh_revokes_the_previous_access_token_only_when_switched_on(
    connect: Connect, flow: Flow, clock: Clock, switch: bool
) -> None:
    """On: the login's earlier access token dies the moment a refresh issues a new one,
    long before its expiry; off: it lives out its ttl. The new token works either way."""
    fake = flow.make(ttl=TTL, now=clock, revoke_previous_access_on_refresh=switch)
    client = connect(fake.app)
    first, rt = flow.login(client)
    clock.advance(TTL / 2)
    second, _ = flow.refresh(client, rt)
    assert fake.is_access_token_valid(first) is not switch
    assert flow.me(client, first) == (401 if switch else 200)
    assert fake.is_access_token_valid(second)
    assert flow.me(client, second) == 200
    clock.advance(TTL / 2 - 0.001)  # first's last moment by its ttl
    assert fake.is_access_token_valid(first) is not switch


def test_revocation_on_refresh_spares_other_logins(connect: Connect, flow: Flow) -> None:
    """Only the refreshed login's family is affected: another login's token keeps working."""
    fake = flow.make(revoke_previous_access_on_refresh=True)
    client = connect(fake.app)
    mine, rt = flow.login(client)
    other, _ = flow.login(client)
    flow.refresh(client, rt)
    assert not fake.is_access_token_valid(mine)
    assert fake.is_access_token_valid(other)
    assert flow.me(client, other) == 200


def test_every_refresh_kills_all_earlier_access_tokens_of_the_chain(
    connect: Connect, flow: Flow
) -> None:
    """Three refreshes down the chain (rotated or not): only the newest token is alive."""
    fake = flow.make(revoke_previous_access_on_refresh=True)
    client = connect(fake.app)
    access, rt = flow.login(client)
    issued = [access]
    for _ in range(3):
        access, rt = flow.refresh(client, rt)
        issued.append(access)
    assert [fake.is_access_token_valid(t) for t in issued] == [False, False, False, True]
    assert fake.issued_access_tokens == issued


def test_the_switch_is_a_mutable_attribute(connect: Connect, flow: Flow) -> None:
    """Flipped after the app was built, it applies from the next refresh on."""
    fake = flow.make()
    client = connect(fake.app)
    first, rt = flow.login(client)
    second, rt = flow.refresh(client, rt)
    assert fake.is_access_token_valid(first)
    fake.revoke_previous_access_on_refresh = True
    flow.refresh(client, rt)
    assert not fake.is_access_token_valid(first)
    assert not fake.is_access_token_valid(second)


# -- reuse_revokes_family ----------------------------------------------------------------


@pytest.mark.parametrize("switch", [False, True], ids=["off", "on"])
def test_reusing_a_rotated_refresh_token_revokes_the_family_only_when_switched_on(
    connect: Connect, rotating: Flow, switch: bool
) -> None:
    """The rotated-away token is refused either way, with the provider's usual error; on,
    that also kills the whole login: the current refresh token and every access token."""
    fake = rotating.make(reuse_revokes_family=switch)
    client = connect(fake.app)
    first, rt1 = rotating.login(client)
    second, rt2 = rotating.refresh(client, rt1)
    reused = rotating.refresh_request(client, rt1)
    assert reused.status_code == rotating.refused
    survivors = [fake.is_refresh_token_valid(rt2), fake.is_access_token_valid(second)]
    assert survivors == [not switch, not switch]
    assert fake.is_access_token_valid(first) is not switch
    assert rotating.me(client, second) == (401 if switch else 200)
    after = rotating.refresh_request(client, rt2)
    assert after.status_code == (rotating.refused if switch else 200)


def test_reuse_error_is_the_ordinary_refused_refresh(connect: Connect, rotating: Flow) -> None:
    """The answer to a reuse is the answer to any revoked refresh token, even where the
    rotated-away token would otherwise still be accepted."""
    assert rotating.keep_rotated is not None
    fake = rotating.make(reuse_revokes_family=True, **rotating.keep_rotated)
    client = connect(fake.app)
    _, rt1 = rotating.login(client)
    rotating.refresh(client, rt1)
    _, revoked = rotating.login(client)
    fake.revoke_refresh_token(revoked)
    reuse = rotating.refresh_request(client, rt1)
    ordinary = rotating.refresh_request(client, revoked)
    assert (reuse.status_code, reuse.json()) == (ordinary.status_code, ordinary.json())


@pytest.mark.parametrize("switch", [False, True], ids=["off", "on"])
def test_reuse_detection_overrides_options_that_keep_rotated_tokens_valid(
    connect: Connect, rotating: Flow, switch: bool
) -> None:
    """With the fake's own keep-the-old-token option, a rotated-away token normally still
    works; reuse detection still treats presenting it as reuse."""
    assert rotating.keep_rotated is not None
    fake = rotating.make(reuse_revokes_family=switch, **rotating.keep_rotated)
    client = connect(fake.app)
    _, rt1 = rotating.login(client)
    _, rt2 = rotating.refresh(client, rt1)
    assert fake.is_refresh_token_valid(rt1)  # the option at work
    reused = rotating.refresh_request(client, rt1)
    assert reused.status_code == (rotating.refused if switch else 200)
    assert fake.is_refresh_token_valid(rt2) is not switch


def test_reuse_revocation_spares_other_logins(connect: Connect, rotating: Flow) -> None:
    """A family is one login: a second login of the same user keeps working."""
    fake = rotating.make(reuse_revokes_family=True)
    client = connect(fake.app)
    _, rt1 = rotating.login(client)
    _, rt2 = rotating.refresh(client, rt1)
    other_access, other_rt = rotating.login(client)
    rotating.refresh_request(client, rt1)
    assert not fake.is_refresh_token_valid(rt2)
    assert fake.is_access_token_valid(other_access)
    assert fake.is_refresh_token_valid(other_rt)


def test_a_seeded_refresh_token_starts_a_family(connect: Connect, rotating: Flow) -> None:
    """Seeds are logins too: reusing a rotated seed kills what was derived from it."""
    fake = rotating.make(reuse_revokes_family=True)
    client = connect(fake.app)
    seed = rotating.seed(fake)
    access, rt = rotating.refresh(client, seed)
    assert rotating.refresh_request(client, seed).status_code == rotating.refused
    assert not fake.is_access_token_valid(access)
    assert not fake.is_refresh_token_valid(rt)


def test_hub_never_rotates_so_reuse_detection_never_fires(connect: Connect) -> None:
    """Hub hands back no new refresh token; using the same one again is normal, not reuse."""
    hub = next(f for f in FLOWS if f.name == "hub")
    fake = hub.make(reuse_revokes_family=True)
    client = connect(fake.app)
    _, rt = hub.login(client)
    tokens = [hub.refresh(client, rt)[0] for _ in range(3)]
    assert all(fake.is_access_token_valid(t) for t in tokens)
    assert fake.is_refresh_token_valid(rt)


def test_non_rotating_hiro_and_oauth2_never_trip_reuse_detection(connect: Connect) -> None:
    """rotate_refresh_tokens=False: the same refresh token again and again is normal use."""
    for flow in (f for f in ROTATING if f.name in ("hiro-app", "oauth2")):
        fake = flow.make(reuse_revokes_family=True, rotate_refresh_tokens=False)
        client = connect(fake.app)
        _, rt = flow.login(client)
        for _ in range(3):
            assert flow.refresh(client, rt)[1] == rt
        assert fake.is_refresh_token_valid(rt)
