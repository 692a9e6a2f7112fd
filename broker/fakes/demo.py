"""Demo wiring: build any fake with its defaults and describe the (non-secret) demo credentials."""

from __future__ import annotations

from typing import Literal, get_args

from broker.fakes import aerion, hiro, hub, oauth2
from broker.fakes.base import FakeProvider
from broker.fakes.quirks import NO_QUIRKS, WorldQuirks

FakeKind = Literal["hiro", "aerion", "hub", "oauth2"]
FAKE_KINDS: tuple[FakeKind, ...] = get_args(FakeKind)


def make_demo_fake(
    kind: FakeKind, *, ttl: float | None = None, quirks: WorldQuirks = NO_QUIRKS
) -> FakeProvider:
    """A fake of ``kind`` with its demo users and clients; ``ttl`` overrides the token lifetime."""
    fake: FakeProvider
    if kind == "hiro":
        fake = hiro.FakeHiro(quirks=quirks)
    elif kind == "aerion":
        fake = aerion.FakeAerion(quirks=quirks)
    elif kind == "hub":
        fake = hub.FakeHub(quirks=quirks)
    else:
        fake = oauth2.FakeOAuth2(quirks=quirks)
    if ttl is not None:
        fake.ttl = ttl
    return fake


def demo_credentials(kind: FakeKind, *, quirks: WorldQuirks = NO_QUIRKS) -> dict[str, str]:
    """What a client needs to log in to the fake that :func:`make_demo_fake` builds."""
    if kind == "hiro":
        return {
            "username": hiro.DEMO_USERNAME,
            "password": hiro.DEMO_PASSWORD,
            "client_id": hiro.DEMO_CLIENT_ID,
            "client_secret": hiro.DEMO_CLIENT_SECRET,
        }
    if kind == "aerion":
        return {
            "company": aerion.DEMO_TENANT,
            "username": aerion.DEMO_EMAIL,
            "password": aerion.DEMO_PASSWORD,
            "client_id": aerion.DEMO_CLIENT_ID,
            "client_secret": aerion.DEMO_CLIENT_SECRET,
        }
    if kind == "hub":
        return {
            "username": hub.DEMO_LOGIN,
            "password": hub.DEMO_PASSWORD,
            "client_id": hub.DEMO_SERVICE_ID,
            "client_secret": hub.DEMO_SERVICE_SECRET,
            "scope": hub.HUB_SERVICE_ID,
            "admin_token": hub.DEMO_ADMIN_TOKEN,
        }
    return {
        "username": oauth2.DEMO_USERNAME,
        "password": oauth2.DEMO_PASSWORD,
        "client_id": oauth2.DEMO_CLIENT_ID,
        "client_secret": oauth2.DEMO_CLIENT_SECRET,
        "public_client_id": oauth2.DEMO_PUBLIC_CLIENT_ID,
        "token_path": oauth2.FakeOAuth2(quirks=quirks).served_token_path,
    }
