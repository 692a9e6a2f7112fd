"""broker.config.overrides: BROKER_* variables and command-line options onto YAML (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from broker.config.load import DEPRECATED_KEYS
from broker.config.overrides import (
    Layered,
    Shape,
    apply_command_line,
    field_shape,
    merge_environment,
    strip_deprecated,
)
from broker.config.settings import BrokerSettings, ClientConfig
from broker.policy.schedule import RefreshSettings

FILE: dict[str, Any] = {
    "port": 8181,
    "providers": {
        "my-api": {"type": "oauth2", "password": {"env": "X"}},
        "hub": {"type": "hub", "refresh": None},
    },
    "clients": {"Ops": {"key": "k"}},
}


def merged(**environ: str) -> Layered:
    return merge_environment(
        FILE, environ, BrokerSettings, source="c.yaml", deprecated=DEPRECATED_KEYS
    )


@pytest.mark.parametrize(
    ("environ", "path", "value", "origin"),
    [
        pytest.param({"BROKER_PORT": "9"}, ("port",), "9", "BROKER_PORT", id="top-level-text"),
        pytest.param({"broker_Log_Level": "debug"}, ("log_level",), "debug", None, id="any-case"),
        pytest.param(
            {"BROKER_PROVIDERS__MY_API__PASSWORD": "pw"},
            ("providers", "my-api", "password"),
            "pw",
            None,
            id="underscore-is-dash",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__MY_API__PASSWORD": "[1]"},
            ("providers", "my-api", "password"),
            "[1]",
            None,
            id="secret-never-json",
        ),
        pytest.param(
            {"BROKER_CLIENTS__OPS__PROVIDERS": '["hub"]'},
            ("clients", "Ops", "providers"),
            ["hub"],
            None,
            id="list-json-client-name-any-case",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__HUB__REFRESH__MARGIN": "5"},
            ("providers", "hub", "refresh", "margin"),
            "5",
            None,
            id="null-block-started",
        ),
        pytest.param(
            {"BROKER_SECURITY__REQUIRE_HEADER": '{"name": "X-A", "value": "1"}'},
            ("security", "require_header"),
            {"name": "X-A", "value": "1"},
            None,
            id="block-json",
        ),
        pytest.param(
            {"BROKER_REFRESH__FORCE_COOLDOWN": "5"},
            ("refresh", "force_cooldown"),
            "5",
            None,
            id="deprecated-key-accepted",
        ),
    ],
)
def test_merge_sets_the_key(
    environ: dict[str, str], path: tuple[str, ...], value: object, origin: str | None
) -> None:
    """Each variable lands at its key path, recorded with its origin; the file is not changed."""
    result = merged(**environ)
    assert result.problems == []
    node: Any = result.data
    for key in path:
        node = node[key]
    assert node == value
    [name] = environ
    assert result.origins == {path: f"environment: {origin or name}"}
    assert FILE["providers"]["hub"]["refresh"] is None  # copied, not changed


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        pytest.param({"BROKER_NOPE__X": "1"}, "nope: unknown key", id="nested-foreign"),
        pytest.param(
            {"BROKER_PROVIDERS__NOPE__PASSWORD": "s"},
            "no provider named 'nope' in c.yaml",
            id="no-provider",
        ),
        pytest.param(
            {"BROKER_CLIENTS__BILLING__KEY": "s"},
            "no client named 'billing' in c.yaml",
            id="no-client",
        ),
        pytest.param(
            {"BROKER_PROVIDERS__HUB__SCOPES": "s"}, "providers.hub.scopes: unknown key", id="key"
        ),
        pytest.param({"BROKER_PROVIDERS": "{}"}, "providers: set one key per", id="named-map"),
        pytest.param(
            {"BROKER_PROVIDERS__HUB": "{}"}, "providers.hub: set one key per", id="named-entry"
        ),
        pytest.param({"BROKER_PORT__X": "1"}, "port takes one value", id="below-scalar"),
        pytest.param(
            {"BROKER_PROVIDERS__HUB__HEADERS__X_A": "1"},
            "providers.hub.headers is set whole, as JSON, in BROKER_PROVIDERS__HUB__HEADERS",
            id="below-mapping",
        ),
        pytest.param({"BROKER_REFRESH": "ratio=1"}, "not valid JSON", id="bad-json"),
        pytest.param(
            {"BROKER_PORT__X": "1", "BROKER_PORT": "1"}, "port takes one value", id="one-of-two"
        ),
    ],
)
def test_merge_problems_name_the_variable(environ: dict[str, str], problem: str) -> None:
    """A variable that cannot be applied is a problem naming it; the others still apply."""
    result = merged(**environ)
    assert len(result.problems) == 1, result.problems
    assert result.problems[0].startswith("environment: BROKER_")
    assert problem in result.problems[0]


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({"BROKER_URL": "http://b"}, id="url"),
        pytest.param({"BROKER_KEY": "secret", "BROKER_KEY_FILE": "/k"}, id="key"),
        pytest.param({"BROKER_REDIS_URL": "redis://r"}, id="redis"),
        pytest.param({"PORT": "1", "XBROKER_PORT": "1"}, id="not-broker"),
    ],
)
def test_merge_ignores_foreign_top_level_variables(environ: dict[str, str]) -> None:
    """Top-level BROKER_* variables of other programs are none of the broker's business."""
    result = merged(**environ)
    assert (result.data, result.origins, result.problems) == (FILE, {}, [])


def test_merge_applies_a_block_before_keys_inside_it() -> None:
    """BROKER_REFRESH (JSON) then BROKER_REFRESH__MARGIN: both count, each key its origin."""
    result = merged(BROKER_REFRESH__MARGIN="5", BROKER_REFRESH='{"ratio": 0.5, "margin": 1}')
    assert result.data["refresh"] == {"ratio": 0.5, "margin": "5"}
    assert result.origin_of(("refresh", "ratio")) == ("environment: BROKER_REFRESH", ("ratio",))
    assert result.origin_of(("refresh", "margin")) == ("environment: BROKER_REFRESH__MARGIN", ())


def test_a_non_mapping_in_the_file_is_not_overwritten() -> None:
    """`refresh: 5` in the file and BROKER_REFRESH__MARGIN: a problem, not a silent replacement."""
    result = merge_environment(
        {"refresh": 5},
        {"BROKER_REFRESH__MARGIN": "1"},
        BrokerSettings,
        source="c.yaml",
        deprecated={},
    )
    assert result.data == {"refresh": 5}
    assert result.problems == [
        "environment: BROKER_REFRESH__MARGIN: refresh in c.yaml is not a mapping, so it has no"
        " keys to set"
    ]


def test_command_line_replaces_environment_origin() -> None:
    """--port wins over BROKER_PORT, and errors at port name the option."""
    result = apply_command_line(merged(BROKER_PORT="1"), {"port": 2}, BrokerSettings)
    assert result.data["port"] == 2
    assert result.origins == {("port",): "command line: --port"}
    assert result.origin_of(("port",)) == ("command line: --port", ())
    with pytest.raises(ValueError, match="no settings key"):
        apply_command_line(merged(), {"listen": 1}, BrokerSettings)


@pytest.mark.parametrize(
    ("data", "expected", "removed"),
    [
        pytest.param({"port": 1}, {"port": 1}, [], id="nothing"),
        pytest.param(
            {"refresh": {"force_cooldown": 5, "ratio": 0.5}},
            {"refresh": {"ratio": 0.5}},
            [("refresh", "force_cooldown")],
            id="top-level",
        ),
        pytest.param(
            {"providers": {"a": {"refresh": {"force_cooldown": 1}}, "b": {}}},
            {"providers": {"a": {"refresh": {}}, "b": {}}},
            [("providers", "a", "refresh", "force_cooldown")],
            id="provider",
        ),
        pytest.param(
            {"providers": {"a": None, "b": {"refresh": 3}}, "force_cooldown": 1},
            {"providers": {"a": None, "b": {"refresh": 3}}, "force_cooldown": 1},
            [],
            id="only-where-the-model-is",
        ),
    ],
)
def test_strip_deprecated(
    data: dict[str, Any], expected: dict[str, Any], removed: list[tuple[str, ...]]
) -> None:
    """Deprecated keys go wherever their model appears, with their paths; the rest stays."""
    out, found = strip_deprecated(data, (BrokerSettings,), DEPRECATED_KEYS)
    assert out == expected
    assert [path for path, _ in found] == removed
    if not removed:
        assert out is data  # nothing copied


@pytest.mark.parametrize(
    ("models", "key", "shape"),
    [
        ((BrokerSettings,), "port", Shape("scalar")),
        ((BrokerSettings,), "state_key", Shape("secret")),
        ((BrokerSettings,), "refresh", Shape("model", (RefreshSettings,))),
        ((BrokerSettings,), "clients", Shape("named", (ClientConfig,))),
        ((BrokerSettings,), "nope", None),
        ((ClientConfig,), "key", Shape("secret")),
        ((ClientConfig,), "providers", Shape("list")),
    ],
)
def test_field_shape(models: tuple[type[Any], ...], key: str, shape: Shape | None) -> None:
    """Shapes come from the models' annotations."""
    assert field_shape(models, key) == shape


def test_every_provider_secret_field_is_a_secret_shape() -> None:
    """Every field typed Secret or Indirect is never JSON-parsed, in every provider type."""
    providers = field_shape((BrokerSettings,), "providers")
    assert providers is not None
    assert [m.__name__ for m in providers.models] == [
        "HiroProvider",
        "AerionProvider",
        "HubProvider",
        "OAuth2Provider",
    ]
    for model in providers.models:
        for key in ("client_id", "client_secret", "username", "password", "refresh_token"):
            assert field_shape((model,), key) == Shape("secret"), (model, key)
