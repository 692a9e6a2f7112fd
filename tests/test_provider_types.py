"""Every provider type is complete: config model, protocol, login identity, fake, docs.

Adding a type means its protocol module, its config model, its fake, its tests and the
docs. These checks fail loudly when one of the other places that must know about it was
forgotten, instead of the broker quietly doing something else.
"""

from __future__ import annotations

import re
from typing import get_args

import pytest
from pydantic import BaseModel

from broker.config.providers import PROVIDER_TYPES, ProviderConfig
from broker.engine.fingerprint import LOGIN_ENDPOINT_FIELDS, login_fingerprint
from broker.fakes import FAKE_KINDS, FakeKind, demo_credentials, make_demo_fake
from broker.protocols import build_protocol
from tests.support import ROOT, settings_from

IDENTIFYING = {*LOGIN_ENDPOINT_FIELDS, "type", "client_id", "username", "refresh_token"}
"""What :func:`broker.engine.fingerprint.login_fingerprint` takes from a provider's config."""

NOT_IDENTIFYING = {
    # Credentials and settings of the same login: changing them keeps its refresh token.
    "common": {
        "password",
        "client_secret",
        "timeout",
        "default_expires_in",
        "refresh",
        "sink",
        "sinks",
        "allow_insecure_http",
    },
    "hiro": {"client_auth", "redirect_uri", "prompt", "authorize_params"},
    "aerion": {"tenant_header"},
    "hub": {"scope", "grant", "redirect_uri", "prompt", "authorize_params"},
    "oauth2": {
        "grant",
        "client_auth",
        "scope",
        "audience",
        "extra_params",
        "headers",
        # How the browser is sent and brought back: the same login.
        "redirect_uri",
        "prompt",
        "authorize_params",
        "device_authorization_url",
    },
}
"""Every other field of each provider model, classified on purpose."""


def models() -> dict[str, type[BaseModel]]:
    union: object = get_args(ProviderConfig)[0]  # Annotated[A | B | ..., discriminator]
    found: dict[str, type[BaseModel]] = {}
    for model in get_args(union):
        (kind,) = get_args(model.model_fields["type"].annotation)
        found[kind] = model
    return found


def test_the_config_union_and_the_type_list_name_the_same_types() -> None:
    assert sorted(models()) == sorted(PROVIDER_TYPES)


@pytest.mark.parametrize("kind", PROVIDER_TYPES)
def test_every_field_either_identifies_the_login_or_is_said_not_to(kind: str) -> None:
    fields = set(models()[kind].model_fields)
    unclassified = fields - IDENTIFYING - NOT_IDENTIFYING["common"] - NOT_IDENTIFYING[kind]
    assert not unclassified, (
        f"{kind}: decide whether {sorted(unclassified)} identify a login: if so, append them"
        " to broker.engine.fingerprint.LOGIN_ENDPOINT_FIELDS; if not, list them in NOT_IDENTIFYING"
    )


@pytest.mark.parametrize("kind", PROVIDER_TYPES)
def test_every_type_has_a_fake_a_protocol_and_a_row_in_the_readme(kind: FakeKind) -> None:
    assert kind in FAKE_KINDS
    fake = make_demo_fake(kind)
    credentials = demo_credentials(kind)
    assert fake is not None
    assert credentials
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^\| `{kind}` \|", readme, re.MULTILINE), f"README providers table: {kind}"
    settings = settings_from(EXAMPLES[kind])
    config = settings.providers["p"]
    assert build_protocol(config).describe()
    assert login_fingerprint(config)


EXAMPLES = {
    "hiro": """
providers:
  p: {type: hiro, url: "http://127.0.0.1:9", client_id: c, client_secret: s,
      username: u, password: pw}
""",
    "aerion": """
providers:
  p: {type: aerion, company_url: "https://acme.aerion.app", username: u, password: pw}
""",
    "hub": """
providers:
  p: {type: hub, url: "http://127.0.0.1:9", client_id: c, client_secret: s}
""",
    "oauth2": """
providers:
  p: {type: oauth2, token_url: "http://127.0.0.1:9/t", grant: client_credentials,
      client_id: c, client_secret: s}
""",
}


def test_the_fingerprint_of_existing_state_files_does_not_change() -> None:
    """Saved state files carry this fingerprint: a change would make every broker log in
    again after an upgrade (and lose seeded logins)."""
    config = settings_from(EXAMPLES["hiro"]).providers["p"]
    # Computed by the code that wrote the state files of earlier versions.
    assert login_fingerprint(config) == (
        "5af61058d3b93ccd449bd0b3de43748bbb30a00bb293541e72f041013f4daf74"
    )
