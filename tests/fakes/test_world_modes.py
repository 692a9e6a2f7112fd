"""WorldQuirks and WORLD_MODES: one switchboard for every fake, and clients that survive it.

A client that plays by the rules (form-encodes Basic, finds the token path, always uses the
newest refresh and access token) keeps working in every world, hostile included.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import fields

import pytest

from broker.fakes import WORLD_MODES, FakeProvider, WorldQuirks
from tests.fakes.helpers import Connect, new_client
from tests.fakes.world import FLOWS, Flow

SWITCHES = [f.name for f in fields(WorldQuirks)]


@pytest.fixture(params=FLOWS, ids=[f.name for f in FLOWS])
def flow(request: pytest.FixtureRequest) -> Flow:
    param: Flow = request.param
    return param


def switched_on(quirks: WorldQuirks) -> set[str]:
    return {name for name in SWITCHES if getattr(quirks, name)}


def test_the_modes_go_from_kind_to_hostile() -> None:
    """kind is all off (the fakes' defaults), hostile all on, every other mode one switch."""
    assert WORLD_MODES["kind"] == WorldQuirks()
    assert switched_on(WORLD_MODES["kind"]) == set()
    assert switched_on(WORLD_MODES["hostile"]) == set(SWITCHES)
    singles = {name: switched_on(q) for name, q in WORLD_MODES.items()}
    del singles["kind"], singles["hostile"]
    assert sorted(len(on) for on in singles.values()) == [1] * len(SWITCHES)
    assert set().union(*singles.values()) == set(SWITCHES)


def test_every_fake_takes_quirks_and_keyword_overrides(flow: Flow) -> None:
    """quirks= sets every switch attribute; a keyword argument wins over it."""
    fake: FakeProvider = flow.make(quirks=WORLD_MODES["hostile"], reuse_revokes_family=False)
    assert fake.quirks == WorldQuirks(**{name: name != "reuse_revokes_family" for name in SWITCHES})
    assert fake.reuse_revokes_family is False
    assert fake.echo_credentials_in_errors is True
    assert flow.make().quirks == WORLD_MODES["kind"]


def test_assigning_quirks_sets_every_switch(flow: Flow) -> None:
    """.quirks is a property: a WorldQuirks in, every attribute set; attributes flip one by one."""
    fake = flow.make()
    fake.quirks = WORLD_MODES["hostile"]
    assert all(getattr(fake, name) for name in SWITCHES)
    fake.basic_form_encoded = False
    assert fake.quirks == WorldQuirks(**{name: name != "basic_form_encoded" for name in SWITCHES})


@pytest.mark.parametrize("mode", WORLD_MODES)
def test_a_careful_client_keeps_working_in_every_world(
    connect: Connect, flow: Flow, mode: str
) -> None:
    """Login, three refreshes down the chain: the newest access token always works."""
    fake = flow.make(quirks=WORLD_MODES[mode])
    client = connect(fake.app)
    access, rt = flow.login(client)
    for _ in range(3):
        access, rt = flow.refresh(client, rt)
        assert flow.me(client, access) == 200
    assert fake.is_refresh_token_valid(rt)


def test_cli_serves_a_hostile_world() -> None:
    """``--quirks hostile`` says so and moves the OAuth2 token path to its slashed spelling."""
    command = [sys.executable, "-m", "broker.fakes", "oauth2", "--quirks", "hostile"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert match, line
        assert "quirks=hostile" in line
        assert "token_path=/oauth/token/" in line
        with new_client(match.group(1)) as client:
            assert client.post("/oauth/token", data={}).status_code == 404
            assert client.post("/oauth/token/", data={}).status_code == 400
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
