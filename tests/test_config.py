"""Config parsing: YAML → BrokerSettings, secrets, env overrides and error messages."""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

import pytest

from broker.config.load import inline_secret_warnings, load_config, parse_config
from broker.config.providers import (
    AerionProvider,
    HiroProvider,
    HubProvider,
    OAuth2Provider,
)
from broker.config.settings import BrokerSettings
from broker.core.errors import ConfigError
from broker.policy.schedule import RefreshSettings
from tests.support import ROOT, settings_from

SECRET = "hunter2-SECRET"
"""A secret value that must never appear in an error message or a repr."""


@pytest.fixture(autouse=True)
def clean_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep BROKER_* variables of the surrounding shell out of these tests."""
    for name in list(os.environ):
        if name.upper().startswith("BROKER_"):
            monkeypatch.delenv(name)


def config_error(text: str) -> str:
    """The message of the ConfigError that parsing *text* raises."""
    with pytest.raises(ConfigError) as info:
        settings_from(text)
    return str(info.value)


def unnumbered(message: str) -> list[str]:
    """The message's lines without their line numbers (``test.yaml:12: `` → ``test.yaml: ``)."""
    return [re.sub(r"^([^:\s]+):\d+: ", r"\1: ", line) for line in message.splitlines()]


# --- minimal valid configs ---------------------------------------------------------------

HIRO = """
providers:
  hiro:
    type: hiro
    url: https://core.arago.test/
    client_id: cid
    client_secret: csecret
    username: user@company.co
    password: "12345678"
"""

AERION = """
providers:
  aerion:
    type: aerion
    company_url: https://acme.aerion.app
    username: jd@example.com
    password: pw
"""

HUB = """
providers:
  hub:
    type: hub
    url: https://hub.example.com
    client_id: svc-id
    client_secret: svc-secret
"""

OAUTH2 = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/oauth/token
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""


def test_minimal_hiro() -> None:
    """A HIRO provider needs url, client pair and a user; the rest has defaults."""
    settings = settings_from(HIRO)
    hiro = settings.providers["hiro"]
    assert isinstance(hiro, HiroProvider)
    assert hiro.url == "https://core.arago.test/"  # as written; presets join paths to it
    assert hiro.auth_api == "/api/auth/6"
    assert hiro.flow == "app"
    assert hiro.client_id == "cid"
    assert hiro.client_secret.get_secret_value() == "csecret"
    assert hiro.username == "user@company.co"
    assert hiro.password is not None
    assert hiro.password.get_secret_value() == "12345678"
    assert hiro.refresh_token is None
    assert hiro.timeout == 10.0
    assert hiro.default_expires_in == 3600.0


def test_minimal_aerion() -> None:
    """An Aerion provider defaults the API host and a public client pair."""
    aerion = settings_from(AERION).providers["aerion"]
    assert isinstance(aerion, AerionProvider)
    assert aerion.url == "https://api.aerion.app"
    assert aerion.company_url == "https://acme.aerion.app"
    assert aerion.tenant_header == "companyurl"
    assert aerion.client_id == "credential-broker"
    assert aerion.client_secret.get_secret_value() == "public"


def test_minimal_hub() -> None:
    """A Hub provider with only the service pair is a client_credentials provider."""
    hub = settings_from(HUB).providers["hub"]
    assert isinstance(hub, HubProvider)
    assert hub.url == "https://hub.example.com"
    assert hub.client_id == "svc-id"
    assert hub.client_secret.get_secret_value() == "svc-secret"
    assert hub.grant is None
    assert hub.scope is None


def test_minimal_oauth2() -> None:
    """A generic OAuth2 provider needs a token URL and a grant."""
    idp = settings_from(OAUTH2).providers["idp"]
    assert isinstance(idp, OAuth2Provider)
    assert idp.token_url == "https://idp.test/oauth/token"
    assert idp.grant == "client_credentials"
    assert idp.client_auth == "client_secret_basic"
    assert idp.extra_params == {}
    assert idp.headers == {}


def test_top_level_defaults() -> None:
    """Without top-level keys the broker listens on 127.0.0.1:8181 with default refresh."""
    settings = settings_from(OAUTH2)
    assert settings.host == "127.0.0.1"
    assert settings.port == 8181
    assert settings.log_level == "info"
    assert settings.refresh == RefreshSettings()
    assert settings.refresh_for("idp") == RefreshSettings()


def test_provider_refresh_overrides_top_level() -> None:
    """A provider's own refresh block replaces the top-level one for that provider."""
    settings = settings_from(
        """
refresh:
  ratio: 0.5
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: client_credentials
    client_id: app
    client_secret: app-secret
    refresh:
      margin: 5
  other:
    type: oauth2
    token_url: https://idp.test/token
    grant: client_credentials
    client_id: app
    client_secret: app-secret
"""
    )
    assert settings.refresh_for("idp") == RefreshSettings(margin=5)
    assert settings.refresh_for("other") == RefreshSettings(ratio=0.5)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        pytest.param(
            """
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    client_secret: cs
    refresh_token: seeded
""",
            "hiro",
            id="hiro-seeded-refresh-token",
        ),
        pytest.param(
            """
providers:
  aerion:
    type: aerion
    company_url: https://acme.aerion.app
    refresh_token: from-sso
""",
            "aerion",
            id="aerion-seeded-refresh-token",
        ),
        pytest.param(
            """
providers:
  hub:
    type: hub
    url: https://hub.test
    client_id: svc
    client_secret: sec
    refresh_token: seeded
""",
            "hub",
            id="hub-seeded-refresh-token",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: refresh_token
    refresh_token: seeded
""",
            "idp",
            id="oauth2-refresh-token-public-client",
        ),
        pytest.param(
            """
providers:
  a:
    type: oauth2
    token_url: http://localhost:8080/token
    grant: password
    username: u
    password: p
""",
            "a",
            id="oauth2-password-no-client-http-url",
        ),
        pytest.param(
            "providers:\n  "
            + "a" * 63
            + ":\n    type: hub\n    url: https://h.test\n    client_id: c\n"
            "    client_secret: s\n",
            "a" * 63,
            id="63-char-name",
        ),
        pytest.param(
            "providers:\n  0a_b-c:\n    type: hub\n    url: https://h.test\n"
            "    client_id: c\n    client_secret: s\n",
            "0a_b-c",
            id="name-digits-underscore-dash",
        ),
    ],
)
def test_more_valid_configs(text: str, name: str) -> None:
    """Seeded refresh tokens, public clients and boring-but-legal names are accepted."""
    assert list(settings_from(text).providers) == [name]


# --- secrets -------------------------------------------------------------------------------


def password_config(secret_yaml: str) -> str:
    return f"""
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    username: alice
    password: {secret_yaml}
"""


def password_of(settings: BrokerSettings) -> str:
    provider = settings.providers["idp"]
    assert provider.password is not None
    return provider.password.get_secret_value()


@pytest.mark.parametrize(
    ("secret_yaml", "expected"),
    [
        pytest.param("plain-text", "plain-text", id="inline"),
        pytest.param('"  spaced  "', "  spaced  ", id="inline-quoted-keeps-spaces"),
        pytest.param('"0123"', "0123", id="quoted-digits"),
        pytest.param("yes", "yes", id="yes-is-text-in-yaml-1.2"),
        pytest.param("on", "on", id="on-is-text-in-yaml-1.2"),
        pytest.param("12:30", "12:30", id="no-sexagesimal-in-yaml-1.2"),
        pytest.param("{value: inline}", "inline", id="value"),
        pytest.param('{value: "{env: X}"}', "{env: X}", id="value-looks-like-a-mapping"),
    ],
)
def test_inline_secrets(secret_yaml: str, expected: str) -> None:
    """Inline and {value: ...} secrets are taken as text, exactly as written."""
    assert password_of(settings_from(password_config(secret_yaml))) == expected


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """{env: NAME} reads the variable when the config is parsed."""
    monkeypatch.setenv("TEST_IDP_PASSWORD", "from-env")
    assert password_of(settings_from(password_config("{env: TEST_IDP_PASSWORD}"))) == "from-env"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("s3cret", "s3cret", id="no-newline"),
        pytest.param("s3cret\n", "s3cret", id="newline"),
        pytest.param("s3cret\r\n", "s3cret", id="crlf"),
        pytest.param("s3cret\n\n", "s3cret", id="blank-lines"),
        pytest.param("  s3cret \n", "  s3cret ", id="spaces-kept"),
        pytest.param("line1\nline2\n", "line1\nline2", id="inner-newline-kept"),
    ],
)
def test_file_secret_trailing_newline_stripped(tmp_path: Path, content: str, expected: str) -> None:
    """{file: PATH} reads the file and strips only the trailing newline(s)."""
    path = tmp_path / "secret"
    path.write_bytes(content.encode())
    assert password_of(settings_from(password_config(f"{{file: {path}}}"))) == expected


# --- only text where text is kept (YAML 1.2) ---------------------------------------------

TEXT_FIELDS = [
    # (config with {v} where the value goes, its line, dotted key, field name)
    pytest.param(password_config("{v}"), 8, "providers.idp.password", "password", id="password"),
    pytest.param(
        password_config("pw").replace("username: alice", "username: {v}"),
        7,
        "providers.idp.username",
        "username",
        id="username",
    ),
    pytest.param(
        OAUTH2.replace("client_id: app", "client_id: {v}"),
        7,
        "providers.idp.client_id",
        "client_id",
        id="client-id",
    ),
    pytest.param(
        OAUTH2.replace("client_secret: app-secret", "client_secret: {v}"),
        8,
        "providers.idp.client_secret",
        "client_secret",
        id="client-secret",
    ),
    pytest.param(
        OAUTH2 + "    refresh_token: {v}\n",
        9,
        "providers.idp.refresh_token",
        "refresh_token",
        id="refresh-token",
    ),
    pytest.param(
        "clients:\n  ops:\n    key: {v}\n" + OAUTH2, 3, "clients.ops.key", "key", id="client-key"
    ),
    pytest.param("state_key: {v}\n" + OAUTH2, 1, "state_key", "state_key", id="state-key"),
    pytest.param(
        "store:\n  backend: redis\n  url: {v}\n" + OAUTH2, 3, "store.url", "url", id="store-url"
    ),
]

NOT_TEXT = [
    pytest.param("0123", "a number", id="leading-zero"),
    pytest.param("0x1F", "a number", id="hex"),
    pytest.param("12345678", "a number", id="int"),
    pytest.param("1e3", "a number", id="float"),
    pytest.param("true", "a boolean", id="true"),
    pytest.param("2024-01-01", "a date", id="date"),
    pytest.param("{value: 0123}", "a number", id="value-number"),
]


@pytest.mark.parametrize(("text", "line", "key", "field"), TEXT_FIELDS)
@pytest.mark.parametrize(("value", "kind"), NOT_TEXT)
def test_secret_and_identifier_fields_take_only_text(
    text: str, line: int, key: str, field: str, value: str, kind: str
) -> None:
    """A YAML number, boolean or date in a secret or id field is refused: say to quote it.

    YAML has already changed it (0123 is 123, 1e3 is 1000.0), so no string could be
    the one written. The value is never shown.
    """
    message = config_error(text.replace("{v}", value))
    assert message == (
        f'test.yaml:{line}: {key}: {kind} here is not kept as written; quote it: {field}: "..."'
    )
    assert not set("0123456789") & set(message.split(": ", 2)[2])


@pytest.mark.parametrize(("text", "line", "key", "field"), TEXT_FIELDS)
@pytest.mark.parametrize("value", ["", "~", "null"])
def test_empty_secret_or_identifier_is_an_error(
    text: str, line: int, key: str, field: str, value: str
) -> None:
    """`password:` with the value forgotten is not taken as "no password"."""
    assert config_error(text.replace("{v}", value)) == (
        f"test.yaml:{line}: {key}: empty (YAML reads it as null); write the value, quoted"
        f' ({field}: "..."), or leave the key out'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            HUB.replace("  hub:", "  0123:"),
            "test.yaml:3: providers.123.(name): a number here is not kept as written;"
            ' quote it: "<name>":',
            id="provider",
        ),
        pytest.param(
            HUB.replace("  hub:", "  true:"),
            'providers.1.(name): a boolean here is not kept as written; quote it: "<name>":',
            id="provider-bool",
        ),
        pytest.param(
            "clients:\n  42: {key: a-long-enough-key}\n" + HUB,
            "test.yaml:2: clients.42.(name): a number here is not kept as written;"
            ' quote it: "<name>":',
            id="client",
        ),
    ],
)
def test_names_given_as_numbers_are_refused(text: str, expected: str) -> None:
    """A provider or client name that YAML reads as a number or boolean must be quoted."""
    assert config_error(text).endswith(expected)


def test_yaml_1_2_keeps_yes_on_and_leading_zeros_as_written() -> None:
    """yes/on are strings and 0123 is no octal number: what YAML 1.1 loaders got wrong."""
    settings = settings_from(
        HUB.replace("client_id: svc-id", 'client_id: "0123"') + "    scope: on\n"
    )
    hub = settings.providers["hub"]
    assert isinstance(hub, HubProvider)
    assert (hub.client_id, hub.scope) == ("0123", "on")


def test_sink_mode_with_a_leading_zero_is_octal() -> None:
    """`mode: 0640` means what chmod means, though YAML 1.2 reads the digits as decimal."""
    for written, mode in [("0640", 0o640), ("0o640", 0o640), ("0400", 0o400), ('"0600"', 0o600)]:
        text = OAUTH2 + f"    sink: {{path: /run/idp.token, mode: {written}}}\n"
        sink = settings_from(text).providers["idp"].sink
        assert sink is not None
        assert sink.mode == mode, written


def test_several_sinks_in_order() -> None:
    """`sinks:` is a list of sink mappings, kept in the order written; `sink:` still works."""
    text = OAUTH2 + (
        "    sinks:\n"
        "      - {path: /run/broker/idp.token}\n"
        "      - {path: /run/app/idp.json, format: json, mode: 0640}\n"
    )
    idp = settings_from(text).providers["idp"]
    assert [(str(s.path), s.format, s.mode) for s in idp.sinks] == [
        ("/run/broker/idp.token", "token", 0o600),
        ("/run/app/idp.json", "json", 0o640),
    ]
    assert [key for key, _ in idp.sink_configs()] == [("sinks", "0"), ("sinks", "1")]
    one = settings_from(OAUTH2 + "    sink: {path: /run/broker/idp.token}\n").providers["idp"]
    assert [key for key, _ in one.sink_configs()] == [("sink",)]
    assert settings_from(OAUTH2).providers["idp"].sink_configs() == []


def test_sink_and_sinks_together_are_refused() -> None:
    """One way to give a provider's sinks: both is an error at the sinks key, saying what to do."""
    text = OAUTH2 + (
        "    sink: {path: /run/broker/a.token}\n    sinks:\n      - {path: /run/broker/b.token}\n"
    )
    assert config_error(text) == (
        "test.yaml:10: providers.idp.sinks: sink and sinks are both given; use one: a single"
        " sink: mapping, or move it into the sinks: list"
    )


def test_two_sinks_with_one_file_are_refused(tmp_path: Path) -> None:
    """The same file twice, in one provider or two, however it is spelled (.., a symbolic
    link to its directory), is an error naming both places."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    same = OAUTH2 + (
        "    sinks:\n"
        f"      - {{path: {real}/idp.token}}\n"
        f"      - {{path: {real}/idp.json, format: json}}\n"
        f"      - {{path: {real}/../real/idp.token, format: env}}\n"
    )
    assert config_error(same) == (
        "test.yaml:12: providers.idp.sinks.2.path: the same file as providers.idp.sinks.0;"
        " each sink needs a file of its own (they would overwrite each other)"
    )
    other = OAUTH2.removeprefix("\nproviders:\n").replace("  idp:", "  other:")
    two = (
        OAUTH2
        + f"    sink: {{path: {real}/idp.token}}\n"
        + other
        + f"    sink: {{path: {tmp_path}/link/idp.token}}\n"
    )
    assert config_error(two) == (
        "test.yaml:16: providers.other.sink.path: the same file as providers.idp.sink;"
        " each sink needs a file of its own (they would overwrite each other)"
    )


def test_sinks_from_the_environment() -> None:
    """BROKER_PROVIDERS__<P>__SINKS takes the list as JSON, checked like the file's."""
    environ = {"BROKER_PROVIDERS__IDP__SINKS": '[{"path": "/run/a"}, {"path": "/run/b"}]'}
    idp = parse_config(OAUTH2, source="test.yaml", environ=environ).providers["idp"]
    assert [str(s.path) for s in idp.sinks] == ["/run/a", "/run/b"]
    environ = {"BROKER_PROVIDERS__IDP__SINKS": '[{"path": "/run/a"}, {"path": "/run/a"}]'}
    with pytest.raises(ConfigError) as info:
        parse_config(OAUTH2, source="test.yaml", environ=environ)
    assert str(info.value) == (
        "environment: BROKER_PROVIDERS__IDP__SINKS: 1.path: the same file as"
        " providers.idp.sinks.0; each sink needs a file of its own (they would overwrite each"
        " other)"
    )


# --- duplicate keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            OAUTH2 + OAUTH2.removeprefix("\nproviders:\n"),
            "test.yaml:9: providers.idp: duplicate key (first at line 3); remove or rename one",
            id="provider-twice",
        ),
        pytest.param(
            password_config(SECRET) + f"    password: {SECRET}-2\n",
            "test.yaml:9: providers.idp.password: duplicate key (first at line 8);"
            " remove or rename one",
            id="password-twice",
        ),
        pytest.param(
            "port: 1\n" + OAUTH2 + "port: 2\n",
            "test.yaml:10: port: duplicate key (first at line 1); remove or rename one",
            id="top-level",
        ),
        pytest.param(
            OAUTH2 + "    headers: {X-A: a, X-A: b}\n",
            "test.yaml:9: providers.idp.headers.X-A: duplicate key (first at line 9);"
            " remove or rename one",
            id="flow-mapping",
        ),
    ],
)
def test_duplicate_keys_are_refused_naming_both_lines(text: str, expected: str) -> None:
    """A key given twice would silently lose the first value: refuse it, with both lines."""
    message = config_error(text)
    assert message == expected
    assert SECRET not in message


# --- environment overrides -----------------------------------------------------------------


def test_env_overrides_port_and_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """BROKER_* variables override the YAML, nested keys joined by __."""
    monkeypatch.setenv("BROKER_PORT", "9999")
    monkeypatch.setenv("BROKER_LOG_LEVEL", "debug")
    monkeypatch.setenv("BROKER_REFRESH__RATIO", "0.5")
    monkeypatch.setenv("BROKER_PROVIDERS__HIRO__PASSWORD", "env-password")
    monkeypatch.setenv("BROKER_PROVIDERS__HIRO__TIMEOUT", "5")
    settings = settings_from(HIRO)
    hiro = settings.providers["hiro"]
    assert isinstance(hiro, HiroProvider)
    assert settings.port == 9999
    assert settings.log_level == "debug"
    assert settings.refresh.ratio == 0.5
    assert hiro.password is not None
    assert hiro.password.get_secret_value() == "env-password"
    assert hiro.timeout == 5.0
    # The rest of the provider still comes from the YAML.
    assert hiro.username == "user@company.co"
    assert hiro.client_secret.get_secret_value() == "csecret"


def test_env_supplies_missing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password left out of the YAML can come from BROKER_PROVIDERS__<NAME>__PASSWORD."""
    monkeypatch.setenv("BROKER_PROVIDERS__IDP__PASSWORD", "env-only")
    text = """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    username: alice
"""
    assert password_of(settings_from(text)) == "env-only"


def test_bad_env_override_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A BROKER_PORT that is not a number is reported against the variable, not the file."""
    monkeypatch.setenv("BROKER_PORT", "not-a-port")
    message = config_error(OAUTH2)
    assert message == (
        "environment: BROKER_PORT: Input should be a valid integer, unable to parse string"
        " as an integer"
    )
    assert "not-a-port" not in message


MY_API = """
providers:
  my-api:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    username: alice
    password: from-file
"""


def parse_with_env(text: str, **environ: str) -> BrokerSettings:
    return parse_config(text, source="test.yaml", environ=environ)


def env_error(text: str, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_with_env(text, **environ)
    return str(info.value)


def password_of_provider(settings: BrokerSettings, name: str) -> str:
    password = settings.providers[name].password
    assert password is not None
    return password.get_secret_value()


@pytest.mark.parametrize(
    "variable",
    [
        "BROKER_PROVIDERS__MY_API__PASSWORD",
        "BROKER_PROVIDERS__MY-API__PASSWORD",
        "broker_providers__My_Api__password",
    ],
)
def test_env_names_a_provider_the_shell_cannot_spell(variable: str) -> None:
    """Provider names match case-insensitively with '_' and '-' the same: MY_API is my-api."""
    settings = parse_with_env(MY_API, **{variable: "from-env"})
    assert password_of_provider(settings, "my-api") == "from-env"


def test_env_sets_list_fields_as_json_and_scalars_as_text() -> None:
    """Lists and mappings take JSON; numbers and booleans are validated from text."""
    settings = parse_with_env(
        "clients:\n  ops:\n    key: ops-key-0123456789\n" + MY_API,
        BROKER_CLIENTS__OPS__PROVIDERS='["my-api"]',
        BROKER_CLIENTS__OPS__STATUS="true",
        BROKER_SECURITY__ALLOWED_HOSTS='["broker"]',
        BROKER_PROVIDERS__MY_API__HEADERS='{"X-Tenant": "blue"}',
        BROKER_PROVIDERS__MY_API__REFRESH__MARGIN="5",
        BROKER_REQUEST_TIMEOUT="2.5",
    )
    assert settings.clients["ops"].providers == ["my-api"]
    assert settings.clients["ops"].status is True
    assert settings.security.allowed_hosts == ["broker"]
    provider = settings.providers["my-api"]
    assert isinstance(provider, OAuth2Provider)
    assert provider.headers == {"X-Tenant": "blue"}
    assert settings.refresh_for("my-api").margin == 5
    assert settings.request_timeout == 2.5


def test_env_secret_is_never_read_as_json() -> None:
    """A password that looks like JSON or like {env: ...} is still the password."""
    settings = parse_with_env(MY_API, BROKER_PROVIDERS__MY_API__PASSWORD='{"env": "X"}')
    assert password_of_provider(settings, "my-api") == '{"env": "X"}'


def test_foreign_top_level_broker_variables_are_ignored() -> None:
    """Programs next to the broker set BROKER_URL, BROKER_KEY ...: not settings, no error."""
    settings = parse_with_env(
        MY_API,
        BROKER_URL="http://broker:8181",
        BROKER_KEY=SECRET,
        BROKER_KEY_FILE="/run/secrets/key",
        BROKER_REDIS_URL="redis://r",
    )
    assert settings.port == 8181


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(
            {"BROKER_PORT": "abc"},
            "environment: BROKER_PORT: Input should be a valid integer, unable to parse string"
            " as an integer",
            id="bad-port",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__MY_API__PASSWROD": SECRET},
            "environment: BROKER_PROVIDERS__MY_API__PASSWROD: providers.my-api.passwrod:"
            " unknown key (check the spelling; config.example.yaml lists every key)",
            id="misspelt-key",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__NOPE__PASSWORD": SECRET},
            "environment: BROKER_PROVIDERS__NOPE__PASSWORD: no provider named 'nope' in test.yaml",
            id="no-such-provider",
        ),
        pytest.param(
            {"BROKER_CLIENTS__OPS__KEY": SECRET},
            "environment: BROKER_CLIENTS__OPS__KEY: no client named 'ops' in test.yaml",
            id="no-such-client",
        ),
        pytest.param(
            {"BROKER_LISTEN__HOST": "0.0.0.0"},
            "environment: BROKER_LISTEN__HOST: listen: unknown key (check the spelling;"
            " config.example.yaml lists every key)",
            id="nested-foreign-variable",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__MY_API": SECRET},
            "environment: BROKER_PROVIDERS__MY_API: providers.my-api: set one key per variable:"
            " BROKER_PROVIDERS__MY_API__<KEY>",
            id="whole-provider",
        ),
        pytest.param(
            {"BROKER_PORT__X": "1"},
            "environment: BROKER_PORT__X: port takes one value; it has no keys",
            id="below-a-scalar",
        ),
        pytest.param(
            {"BROKER_SECURITY__ALLOWED_HOSTS": "broker"},
            "environment: BROKER_SECURITY__ALLOWED_HOSTS: not valid JSON; this key takes JSON"
            """ such as '["a", "b"]'""",
            id="list-not-json",
        ),
        pytest.param(
            {"BROKER_REFRESH": '{"ratio": 5}'},
            "environment: BROKER_REFRESH: ratio: Input should be less than 1",
            id="error-inside-json",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__MY_API__TYPE": "okta"},
            "environment: BROKER_PROVIDERS__MY_API__TYPE: 'okta' is not a provider type"
            " (one of hiro, aerion, hub, oauth2)",
            id="type",
        ),
        pytest.param(
            {
                "BROKER_PROVIDERS__MY_API__PASSWORD": "{env: X}",
                "BROKER_PROVIDERS__MY_API__USERNAME": "",
            },
            None,
            id="empty-username-is-text",
        ),
        pytest.param(
            {"BROKER_PORT": "1", "broker_port": "2"},
            "environment: broker_port: port is also set by BROKER_PORT; set it once",
            id="same-key-twice",
        ),
    ],
)
def test_env_errors_name_the_variable(environ: dict[str, str], expected: str | None) -> None:
    """Every problem with an environment override names the variable, never its value."""
    if expected is None:
        parse_with_env(MY_API, **environ)
        return
    message = env_error(MY_API, **environ)
    assert message == expected
    assert SECRET not in message


def test_env_names_of_two_providers_that_fold_together_are_ambiguous() -> None:
    """my-api and my_api both match MY_API: refuse rather than guess."""
    text = MY_API + MY_API.removeprefix("\nproviders:\n").replace("my-api:", "my_api:")
    assert env_error(text, BROKER_PROVIDERS__MY_API__PASSWORD=SECRET) == (
        "environment: BROKER_PROVIDERS__MY_API__PASSWORD: matches providers 'my-api' and"
        " 'my_api' in test.yaml; rename one (names match with case, '-' and '_' ignored)"
    )


def test_env_and_file_errors_are_reported_together() -> None:
    """A bad variable does not hide the file's problems, nor they its."""
    lines = env_error(MY_API + "port: x\n", BROKER_PROVIDERS__MY_API__PASSWROD="x").splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["environment", "BROKER_PROVIDERS__MY_API__PASSWROD"],
        ["test.yaml:9", "port"],
    ]


# --- keys no longer used -------------------------------------------------------------------

COOLDOWN = "no longer used, ignored: forced refreshes now use If-Match (see README)"


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        pytest.param(
            "refresh:\n  force_cooldown: 5\n" + MY_API,
            {},
            f"test.yaml:2: refresh.force_cooldown: {COOLDOWN}; remove the key",
            id="top-level",
        ),
        pytest.param(
            MY_API + "    refresh: {force_cooldown: 5, margin: 7}\n",
            {},
            f"test.yaml:9: providers.my-api.refresh.force_cooldown: {COOLDOWN}; remove the key",
            id="provider",
        ),
        pytest.param(
            MY_API,
            {"BROKER_REFRESH__FORCE_COOLDOWN": "5"},
            f"environment: BROKER_REFRESH__FORCE_COOLDOWN: {COOLDOWN}; unset the variable",
            id="environment",
        ),
    ],
)
def test_deprecated_key_loads_with_one_warning(
    caplog: pytest.LogCaptureFixture, text: str, environ: dict[str, str], expected: str
) -> None:
    """An old config with refresh.force_cooldown loads; the key is named once, on broker.config."""
    with caplog.at_level(logging.WARNING, logger="broker.config"):
        settings = parse_config(text, source="test.yaml", environ=environ)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("broker.config", logging.WARNING, expected)
    ]
    assert settings.providers["my-api"].refresh in (None, RefreshSettings(margin=7))


def test_deprecated_key_warning_names_the_file_on_every_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """load_config (also what a SIGHUP reload calls) names the file's path."""
    path = tmp_path / "old.yaml"
    path.write_text("refresh:\n  force_cooldown: 30\n" + MY_API, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="broker.config"):
        load_config(path, environ={})
        load_config(path, environ={})
    assert [r.getMessage() for r in caplog.records] == 2 * [
        f"{path}:2: refresh.force_cooldown: {COOLDOWN}; remove the key"
    ]


# --- command-line overrides ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"port": 99999},
            "command line: --port: Input should be less than or equal to 65535",
            id="port",
        ),
        pytest.param(
            {"host": "0.0.0.0"},
            "command line: --host: 0.0.0.0 is reachable from other machines; configure"
            " clients (each with its own key) or, knowingly, set"
            " security.allow_unauthenticated_network: true",
            id="network-host-without-clients",
        ),
    ],
)
def test_command_line_overrides_are_validated(overrides: dict[str, object], expected: str) -> None:
    """--host and --port go through the file's validation, and errors name the option."""
    with pytest.raises(ConfigError) as info:
        parse_config(MY_API + "port: 1\n", source="test.yaml", overrides=overrides, environ={})
    assert str(info.value) == expected


def test_command_line_beats_environment_and_file() -> None:
    """Precedence: command line, environment, file."""
    settings = parse_config(
        MY_API + "port: 1\n",
        source="test.yaml",
        overrides={"port": 3},
        environ={"BROKER_PORT": "2", "BROKER_HOST": "::1"},
    )
    assert (settings.port, settings.host) == (3, "::1")


# --- errors: file, key, problem ------------------------------------------------------------

NAME_RULE = "a provider name must be 1-63 characters of a-z, 0-9, '_' and '-'"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        pytest.param(
            """
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    username: u
    password: p
""",
            "providers.hiro.client_secret",
            "Field required",
            id="missing-client-secret",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: client_credentials
    client_id: app
    client_secret: s
    scopes: a b
""",
            "providers.idp.scopes",
            "unknown key (check the spelling; config.example.yaml lists every key)",
            id="unknown-provider-key",
        ),
        pytest.param(
            OAUTH2 + "listen: 0.0.0.0\n",
            "listen",
            "unknown key",
            id="unknown-top-level-key",
        ),
        pytest.param(
            OAUTH2 + "refresh:\n  ratoi: 0.5\n",
            "refresh.ratoi",
            "unknown key",
            id="unknown-refresh-key",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: idp.test/token
    grant: client_credentials
    client_id: app
    client_secret: s
""",
            "providers.idp.token_url",
            "must be an http:// or https:// URL",
            id="url-without-scheme",
        ),
        pytest.param(
            """
providers:
  hub:
    type: hub
    url: ftp://hub.test
    client_id: c
    client_secret: s
""",
            "providers.hub.url",
            "must be an http:// or https:// URL",
            id="url-ftp",
        ),
        pytest.param(
            """
providers:
  aerion:
    type: aerion
    company_url: "https:///nohost"
    username: u
    password: p
""",
            "providers.aerion.company_url",
            "must be an http:// or https:// URL",
            id="url-no-host",
        ),
        pytest.param(
            HUB.replace("url: https://hub.example.com", "url: https://hub.test/?x=1"),
            "providers.hub.url",
            "must not have a query or fragment: the broker appends endpoint paths to it",
            id="base-url-with-query",
        ),
        pytest.param(
            HUB.replace("  hub:", "  Bad Name:"),
            "providers.Bad Name.(name)",
            NAME_RULE,
            id="name-with-capital-and-space",
        ),
        pytest.param(
            HUB.replace("  hub:", "  ../x:"),
            "providers.../x.(name)",
            NAME_RULE,
            id="name-path-traversal",
        ),
        pytest.param(
            HUB.replace("  hub:", "  " + "n" * 100 + ":"),
            "providers." + "n" * 100 + ".(name)",
            NAME_RULE,
            id="name-100-chars",
        ),
        pytest.param(
            HUB.replace("  hub:", "  " + "n" * 64 + ":"),
            "providers." + "n" * 64 + ".(name)",
            NAME_RULE,
            id="name-64-chars",
        ),
        pytest.param(
            HUB.replace("  hub:", "  -hub:"),
            "providers.-hub.(name)",
            NAME_RULE,
            id="name-leading-dash",
        ),
        pytest.param(
            password_config("{env: TEST_UNSET_SECRET_VARIABLE}"),
            "providers.idp.password",
            "environment variable TEST_UNSET_SECRET_VARIABLE is not set",
            id="env-var-not-set",
        ),
        pytest.param(
            password_config("{env: TEST_EMPTY_SECRET_VARIABLE}"),
            "providers.idp.password",
            "environment variable TEST_EMPTY_SECRET_VARIABLE is empty",
            id="env-var-empty",
        ),
        pytest.param(
            password_config("{file: $TMP/missing}"),
            "providers.idp.password",
            "cannot read secret file $TMP/missing: No such file or directory",
            id="secret-file-missing",
        ),
        pytest.param(
            password_config("{file: $TMP/empty}"),
            "providers.idp.password",
            "secret file $TMP/empty is empty",
            id="secret-file-empty",
        ),
        pytest.param(
            password_config("{file: $TMP/newline}"),
            "providers.idp.password",
            "secret file $TMP/newline is empty",
            id="secret-file-only-newline",
        ),
        pytest.param(
            password_config("{file: $TMP}"),
            "providers.idp.password",
            "cannot read secret file $TMP: Is a directory",
            id="secret-file-is-directory",
        ),
        pytest.param(
            password_config("{path: /run/secrets/pw}"),
            "providers.idp.password",
            "a secret must be a string, {env: NAME}, {file: PATH} or {value: TEXT}",
            id="secret-unknown-source",
        ),
        pytest.param(
            """
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    client_secret: cs
    username: alice
""",
            "providers.hiro",
            "username and password go together; password is missing",
            id="username-without-password",
        ),
        pytest.param(
            """
providers:
  aerion:
    type: aerion
    company_url: https://acme.aerion.app
    password: p
""",
            "providers.aerion",
            "username and password go together; username is missing",
            id="password-without-username",
        ),
        pytest.param(
            """
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    client_secret: cs
""",
            "providers.hiro",
            "needs username and password, or a refresh_token to start from",
            id="hiro-no-credentials",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: password
    client_id: app
    client_secret: s
""",
            "providers.idp",
            "grant password needs username and password",
            id="grant-password-without-username",
        ),
        pytest.param(
            HUB + "    grant: password\n",
            "providers.hub",
            "grant password needs username and password",
            id="hub-grant-password-without-username",
        ),
        pytest.param(
            HUB + "    grant: refresh_token\n",
            "providers.hub",
            "grant refresh_token needs a refresh_token to start from",
            id="hub-grant-refresh-token-without-one",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: client_credentials
""",
            "providers.idp",
            "grant client_credentials needs client_id and client_secret",
            id="client-credentials-without-client",
        ),
        pytest.param(
            """
providers:
  idp:
    type: oauth2
    token_url: https://idp.test/token
    grant: refresh_token
    refresh_token: rt
    client_secret: s
""",
            "providers.idp",
            "client_secret is set but client_id is not",
            id="client-secret-without-id",
        ),
        pytest.param(
            "providers:\n  x:\n    type: okta\n    url: https://okta.test\n",
            "providers.x.type",
            "'okta' is not a provider type (one of hiro, aerion, hub, oauth2)",
            id="unknown-provider-type",
        ),
        pytest.param(
            "providers:\n  x:\n    url: https://okta.test\n",
            "providers.x.type",
            "missing (one of hiro, aerion, hub, oauth2)",
            id="missing-provider-type",
        ),
        pytest.param(
            "providers: {}\n",
            "providers",
            "at least one provider must be configured",
            id="no-providers",
        ),
        pytest.param("port: 8181\n", "providers", "Field required", id="providers-key-missing"),
        pytest.param("", "providers", "Field required", id="empty-file"),
        pytest.param(OAUTH2 + "port: 70000\n", "port", "65535", id="port-out-of-range"),
        pytest.param(
            OAUTH2 + "refresh:\n  ratio: 1.5\n", "refresh.ratio", "less than 1", id="ratio"
        ),
        pytest.param(
            HUB + "    timeout: 0\n", "providers.hub.timeout", "greater than 0", id="timeout-zero"
        ),
    ],
)
def test_bad_config_names_file_key_and_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str, problem: str
) -> None:
    """Each bad config gives a line '<file>: <dotted key>: <problem>'."""
    monkeypatch.delenv("TEST_UNSET_SECRET_VARIABLE", raising=False)
    monkeypatch.setenv("TEST_EMPTY_SECRET_VARIABLE", "")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "newline").write_bytes(b"\n")
    text = text.replace("$TMP", str(tmp_path))
    problem = problem.replace("$TMP", str(tmp_path))
    lines = unnumbered(config_error(text))
    prefix = f"test.yaml: {key}: "
    matching = [line for line in lines if line.startswith(prefix)]
    assert matching, lines
    assert any(problem in line.removeprefix(prefix) for line in matching), lines


def test_every_problem_gets_its_own_line() -> None:
    """Several problems are reported together, one line each."""
    text = """
port: -1
providers:
  idp:
    type: oauth2
    token_url: nope
    grant: client_credentials
    client_id: app
    client_secret: s
    colour: blue
"""
    lines = config_error(text).splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["test.yaml:2", "port"],
        ["test.yaml:6", "providers.idp.token_url"],
        ["test.yaml:10", "providers.idp.colour"],
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "providers:\n  x:\n    type: hiro\n   url: https://x\n",
            "test.yaml: not valid YAML at line 4, column 4: expected <block end>, but found"
            " '<block mapping start>'",
            id="bad-indentation",
        ),
        pytest.param(
            "providers:\n  x:\n\ttype: hiro\n",
            "test.yaml: not valid YAML at line 3, column 1: found character '\\t' that cannot"
            " start any token",
            id="tab",
        ),
        pytest.param(
            "a: b: c\n",
            "test.yaml: not valid YAML at line 1, column 5: mapping values are not allowed here",
            id="nested-colon",
        ),
        pytest.param(
            "- providers\n- port\n",
            "test.yaml: the top level must be a mapping of keys, got list",
            id="top-level-list",
        ),
        pytest.param(
            "just a string\n",
            "test.yaml: the top level must be a mapping of keys, got str",
            id="top-level-string",
        ),
    ],
)
def test_unreadable_yaml(text: str, expected: str) -> None:
    """Invalid YAML reports line and column; a non-mapping top level says what it got."""
    assert config_error(text) == expected


def test_load_config_reads_file(tmp_path: Path) -> None:
    """load_config parses the file at the path given."""
    path = tmp_path / "broker.yaml"
    path.write_text(OAUTH2, encoding="utf-8")
    assert list(load_config(path).providers) == ["idp"]
    assert list(load_config(str(path)).providers) == ["idp"]


def test_load_config_names_the_file(tmp_path: Path) -> None:
    """Errors from load_config name the file's path."""
    path = tmp_path / "broker.yaml"
    path.write_text("providers: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:1: providers: at least one provider must be configured"


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A config file that cannot be read is a ConfigError naming it."""
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


# --- secrets never leak --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(password_config(f"[{SECRET}]"), id="password-list"),
        pytest.param(password_config(f"{{secret: {SECRET}}}"), id="password-dict"),
        pytest.param(password_config(f"{{value: [{SECRET}]}}"), id="value-list"),
        pytest.param(password_config(f"{{value: {{v: {SECRET}}}}}"), id="value-dict"),
        pytest.param(password_config(f"{{env: X, value: {SECRET}}}"), id="two-sources"),
        pytest.param(password_config(f"{{{SECRET}: x}}"), id="secret-as-key"),
        pytest.param(
            OAUTH2.replace("client_secret: app-secret", f"client_secret: [{SECRET}]"),
            id="client-secret-list",
        ),
        pytest.param(
            OAUTH2 + f"    refresh_token: {{value: [{SECRET}]}}\n", id="refresh-token-list"
        ),
        pytest.param(OAUTH2 + f"    passwort: {SECRET}\n", id="misspelt-key"),
        pytest.param(OAUTH2 + f"port: {SECRET}\n", id="secret-in-port"),
        pytest.param(OAUTH2 + f"log_level: {SECRET}\n", id="secret-in-literal"),
        pytest.param(OAUTH2 + f"    timeout: {SECRET}\n", id="secret-in-timeout"),
        pytest.param(OAUTH2 + f"    extra_params: [{SECRET}]\n", id="secret-in-extra-params"),
        pytest.param(OAUTH2 + f"    headers: {{X-Key: [{SECRET}]}}\n", id="secret-in-header"),
        pytest.param(HUB + f"    grant: {SECRET}\n", id="secret-in-grant"),
        pytest.param(password_config(f'"{SECRET}'), id="unclosed-quote"),
        pytest.param(password_config(f"{SECRET}: x"), id="yaml-error-after-secret"),
        pytest.param(
            f"""
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    client_secret: {SECRET}
    password: {SECRET}
""",
            id="password-without-username",
        ),
    ],
)
def test_error_never_contains_secret(text: str) -> None:
    """Whatever is wrong, the ConfigError message does not echo the secret."""
    message = config_error(text)
    assert message.startswith("test.yaml")
    assert SECRET not in message
    assert SECRET.lower() not in message.lower()


def test_numeric_secret_and_env_value_never_in_error() -> None:
    """Neither a numeric password's digits nor a misspelt variable's value is echoed."""
    message = config_error(password_config("987654321"))
    assert "987654321" not in message
    assert "987" not in message
    message = env_error(MY_API, BROKER_PROVIDERS__MY_API__PASWORD=SECRET, BROKER_PORT=SECRET)
    assert len(message.splitlines()) == 2
    assert SECRET not in message
    assert SECRET.lower() not in message.lower()


def test_secret_file_content_never_in_error(tmp_path: Path) -> None:
    """A secret file that is too large is reported by size, not content."""
    path = tmp_path / "big"
    path.write_text(SECRET * 10_000, encoding="utf-8")
    message = config_error(password_config(f"{{file: {path}}}"))
    assert message.startswith(f"test.yaml:8: providers.idp.password: secret file {path} is ")
    assert SECRET not in message


def test_repr_hides_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """repr and str of the settings show no secret, whatever its source."""
    monkeypatch.setenv("TEST_CLIENT_SECRET", "client-" + SECRET)
    (tmp_path / "rt").write_text("rt-" + SECRET + "\n", encoding="utf-8")
    settings = settings_from(
        f"""
providers:
  hiro:
    type: hiro
    url: https://core.test
    client_id: cid
    client_secret: {{env: TEST_CLIENT_SECRET}}
    username: alice
    password: pw-{SECRET}
    refresh_token: {{file: {tmp_path / "rt"}}}
"""
    )
    hiro = settings.providers["hiro"]
    assert hiro.refresh_token is not None
    assert hiro.refresh_token.get_secret_value() == "rt-" + SECRET
    for text in (repr(settings), str(settings), repr(hiro), str(settings.model_dump())):
        assert SECRET not in text
        assert "alice" in text


@pytest.mark.parametrize(
    ("kwargs", "prefix"),
    [
        pytest.param({}, "<config>", id="default-source"),
        pytest.param({"source": "/etc/broker.yaml"}, "/etc/broker.yaml", id="named-source"),
    ],
)
def test_parse_config_source_prefixes_every_line(kwargs: dict[str, str], prefix: str) -> None:
    """parse_config starts every error line with the source it was given (and the line)."""
    parse = functools.partial(parse_config, source=kwargs["source"]) if kwargs else parse_config
    with pytest.raises(ConfigError) as info:
        parse("port: x\nlisten: y\n")
    assert str(info.value).splitlines() == [
        f"{prefix}:1: port: Input should be a valid integer, unable to parse string as an integer",
        f"{prefix}: providers: Field required",
        f"{prefix}:2: listen: unknown key (check the spelling; config.example.yaml lists every"
        " key)",
    ]


@pytest.mark.parametrize(
    ("url", "extra", "problem"),
    [
        pytest.param("https://idp.example.com/token", "", None, id="https"),
        pytest.param("http://127.0.0.1:9/token", "", None, id="loopback-v4"),
        pytest.param("http://127.8.9.10/token", "", None, id="loopback-v4-range"),
        pytest.param("http://[::1]:9/token", "", None, id="loopback-v6"),
        pytest.param("http://LOCALHOST:9/token", "", None, id="localhost"),
        pytest.param(
            "http://idp.example.com/token", "", "plain http:// to idp.example.com", id="http"
        ),
        pytest.param("http://10.0.0.1/token", "", "plain http:// to 10.0.0.1", id="http-private"),
        pytest.param(
            "http://idp.example.com/token", "allow_insecure_http: true", None, id="http-allowed"
        ),
        pytest.param(
            "https://u:secret-pw@idp.example.com/t", "", "user name or password", id="userinfo"
        ),
        pytest.param("https://u@idp.example.com/t", "", "user name or password", id="user-only"),
        pytest.param("http://u:p@127.0.0.1/t", "", "user name or password", id="userinfo-loopback"),
    ],
)
def test_token_url_rules(url: str, extra: str, problem: str | None) -> None:
    """No credentials in URLs; plain http only to this host unless allowed per provider."""
    text = (
        "providers:\n  p:\n    type: oauth2\n"
        f"    token_url: {url}\n    grant: client_credentials\n"
        "    client_id: app\n    client_secret: app-secret\n" + (f"    {extra}\n" if extra else "")
    )
    if problem is None:
        assert "p" in parse_config(text, source="c.yaml").providers
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml")
    message = str(caught.value)
    assert message.startswith("c.yaml:4: providers.p.token_url: ")
    assert problem in message
    assert "secret-pw" not in message


# --- store: this broker alone, or replicas sharing a Redis -------------------------------------


def test_without_store_the_broker_keeps_its_tokens_alone() -> None:
    store = settings_from(OAUTH2).store
    assert (store.backend, store.url, store.key_prefix, store.lease_ttl) == (
        "local",
        None,
        "broker:",
        10.0,
    )


def test_a_redis_store_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL is a secret like any other: {env: ...}, {file: ...} or inline."""
    url = f"rediss://broker:{SECRET}@redis.internal:6380/2"
    monkeypatch.setenv("TEST_REDIS_URL", url)
    text = (
        "store:\n  backend: redis\n  url: {env: TEST_REDIS_URL}\n"
        "  key_prefix: 'app1:'\n  lease_ttl: 2.5\n" + OAUTH2
    )
    settings = settings_from(text)
    assert settings.store.url is not None
    assert settings.store.url.get_secret_value() == url
    assert (settings.store.key_prefix, settings.store.lease_ttl) == ("app1:", 2.5)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        pytest.param(
            "backend: redis",
            "test.yaml:1: store.url: required with backend: redis",  # at store: it is missing
            id="redis-without-url",
        ),
        pytest.param(
            f"url: redis://:{SECRET}@127.0.0.1",
            "test.yaml:2: store.url: only used with backend: redis"
            " (set backend: redis, or remove url)",
            id="url-without-redis",
        ),
        pytest.param(
            f"backend: redis\n  url: http://:{SECRET}@127.0.0.1",
            "test.yaml:3: store.url: must be a redis:// or rediss:// (TLS) URL",
            id="not-redis",
        ),
        pytest.param(
            f"backend: redis\n  url: unix:///run/{SECRET}.sock",
            "test.yaml:3: store.url: must be a redis:// or rediss:// (TLS) URL",
            id="unix-socket",
        ),
        pytest.param(
            f"backend: redis\n  url: redis://:{SECRET}@127.0.0.1:port{SECRET}",
            "test.yaml:3: store.url: not a URL"
            " (expected redis://[:password@]host[:port][/db] or rediss://...)",
            id="bad-port",
        ),
        pytest.param(
            f"backend: redis\n  url: redis://:{SECRET}@127.0.0.1/{SECRET}",
            "test.yaml:3: store.url: the path must be a database number (/0, /1 ...)",
            id="bad-db",
        ),
        pytest.param(
            "backend: memcached",
            "test.yaml:2: store.backend: Input should be 'local' or 'redis'",
            id="backend",
        ),
        pytest.param(
            "backend: redis\n  url: redis://127.0.0.1\n  lease_ttl: 0.1",
            "test.yaml:4: store.lease_ttl: Input should be greater than or equal to 0.5",
            id="lease-ttl",
        ),
        pytest.param(
            "backend: redis\n  url: redis://127.0.0.1\n  key_prefix: 'a b'",
            "test.yaml:4: store.key_prefix: String should match pattern '^[!-~]+$'",
            id="key-prefix",
        ),
    ],
)
def test_a_bad_store_names_its_key_and_never_the_url(store: str, expected: str) -> None:
    message = config_error(f"store:\n  {store}\n" + OAUTH2)
    assert message == expected
    assert SECRET not in message


def test_a_redis_store_and_a_state_directory_go_together(tmp_path: Path) -> None:
    """The state directory is then each replica's own copy (broker.engine.local_copy)."""
    settings = settings_from(
        f"state_dir: {tmp_path}\nstore:\n  backend: redis\n  url: redis://127.0.0.1\n" + OAUTH2
    )
    assert settings.state_dir == tmp_path
    assert settings.store.backend == "redis"


def test_an_inline_redis_url_in_a_readable_file_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "store:\n  backend: redis\n  url: redis://:pw@127.0.0.1\n" + OAUTH2, encoding="utf-8"
    )
    path.chmod(0o644)
    warnings = inline_secret_warnings(path)
    assert any(f"{path}: store.url is written inline" in w for w in warnings), warnings
    assert not any(".url is" in w and "store.url" not in w for w in warnings)


def test_the_example_configs_store_block_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.example.yaml shows `store` commented out (it replaces state_dir): uncommented,
    it is a valid config, with the defaults it states."""
    example = (ROOT / "config.example.yaml").read_text()
    block = re.search(r"^#store:\n(?:#  .*\n)+", example, re.MULTILINE)
    assert block is not None
    monkeypatch.setenv("BROKER_REDIS_URL", "redis://:pw@redis.internal:6379/0")
    store = settings_from(re.sub(r"^#", "", block.group(0), flags=re.MULTILINE) + OAUTH2).store
    assert (store.backend, store.key_prefix, store.lease_ttl) == ("redis", "broker:", 10.0)
    assert store.url is not None
    assert store.url.get_secret_value() == "redis://:pw@redis.internal:6379/0"
