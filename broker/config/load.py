"""The broker's configuration: one YAML file, overridable from the environment and command line.

Precedence, highest first: command-line options (``broker serve --host/--port``),
``BROKER_*`` environment variables (nested keys joined by ``__``, e.g.
``BROKER_PROVIDERS__HIRO__PASSWORD``; the rules are in :mod:`broker.config.overrides`),
the YAML file (read as YAML 1.2, duplicate keys refused: :mod:`broker.config.yamlfile`),
then the defaults below. All of them go through the same validation.
``config.example.yaml`` documents every key.

A bad configuration raises :class:`ConfigError` with one line per problem naming
where the value came from, the key and the problem, never a secret value::

    config.yaml:12: providers.hiro.password: a number here is not kept as written; ...
    environment: BROKER_PORT: Input should be a valid integer, ...
    command line: --port: Input should be less than or equal to 65535

Keys that are no longer used (:data:`DEPRECATED_KEYS`) are dropped with a warning
on the ``broker.config.settings`` logger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from broker.config.overrides import (
    UNKNOWN_KEY,
    Deprecated,
    Layered,
    apply_command_line,
    merge_environment,
    strip_deprecated,
)
from broker.config.problems import FieldProblem
from broker.config.providers import PROVIDER_TYPES
from broker.config.settings import BrokerSettings
from broker.config.yamlfile import KeyPath, YamlDoc, read_yaml
from broker.core.errors import ConfigError
from broker.policy.schedule import RefreshSettings

log = logging.getLogger("broker.config")


DEPRECATED_KEYS: Deprecated = {
    # Wherever the model appears: refresh and providers.<p>.refresh.
    (RefreshSettings, "force_cooldown"): "forced refreshes now use If-Match (see README)",
}
"""Keys that are no longer used: (model, key) → why. Such a key is dropped with a
warning instead of failing as unknown, so that old configs keep loading."""


def load_config(
    path: Path | str,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BrokerSettings:
    """Read and validate the YAML file at *path*; raise ConfigError on any problem.

    *overrides* are command-line values for top-level keys (``{"port": 9000}``);
    *environ* defaults to ``os.environ``. See :func:`parse_config`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read config file: {exc.strerror or type(exc).__name__}"
        raise ConfigError(msg) from None
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)"
        raise ConfigError(msg) from None
    return parse_config(text, source=str(path), overrides=overrides, environ=environ)


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BrokerSettings:
    """Validate YAML *text* with the ``BROKER_*`` variables of *environ* and the
    command-line *overrides* on top; *source* names the text in messages."""
    doc = read_yaml(text, source)
    data = {} if doc.data is None else doc.data
    if not isinstance(data, dict):
        msg = f"{source}: the top level must be a mapping of keys, got {type(data).__name__}"
        raise ConfigError(msg)
    env = os.environ if environ is None else environ
    layered = merge_environment(
        data, env, BrokerSettings, source=source, deprecated=DEPRECATED_KEYS
    )
    apply_command_line(layered, overrides or {}, BrokerSettings)
    locate = _Locator(source, doc, layered)
    clean, removed = strip_deprecated(layered.data, (BrokerSettings,), DEPRECATED_KEYS)
    for key_path, reason in removed:
        log.warning("%s", locate.deprecated(key_path, reason))
    problems = list(layered.problems)
    try:
        settings = BrokerSettings.model_validate(clean)
    except ValidationError as exc:
        problems += format_validation_error(exc, locate)
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


class _Locator:
    """Names where the value at a key path came from: file and line, variable or option."""

    def __init__(self, source: str, doc: YamlDoc, layered: Layered) -> None:
        self.source, self.doc, self.layered = source, doc, layered

    def where(self, path: KeyPath, *, name: bool = False) -> str:
        """``config.yaml:12: providers.hiro.password``, ``environment: BROKER_PORT`` ...

        *name*: the problem is the last key itself (a provider's name), not its value.
        """
        found = self.layered.origin_of(path)
        if found is not None:
            origin, rest = found
            return f"{origin}: {'.'.join(rest)}" if rest else origin
        line = self.doc.line_of(path)
        file = f"{self.source}:{line}" if line is not None else self.source
        dotted = ".".join((*path, "(name)") if name else path)
        return f"{file}: {dotted}" if dotted else file

    def deprecated(self, path: KeyPath, reason: str) -> str:
        fix = "unset the variable" if self.layered.origin_of(path) else "remove the key"
        return f"{self.where(path)}: no longer used, ignored: {reason}; {fix}"


def format_validation_error(exc: ValidationError, locate: _Locator) -> list[str]:
    """One line per problem: ``file:line: dotted.key: what is wrong`` (or the
    variable or option the value came from instead of the file).

    The input value is deliberately left out: it may be a secret.
    """
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        path, name, message = _describe(err)
        lines.append(f"{locate.where(path, name=name)}: {message}")
    return lines


def _describe(err: ErrorDetails) -> tuple[KeyPath, bool, str]:
    """The key path an error is about, whether it is about the key's name, and the message."""
    loc = [str(part) for part in err["loc"]]
    # A discriminated union puts the provider type into the location
    # (providers.hiro.hiro.password); users never wrote that key.
    if len(loc) > 2 and loc[0] == "providers" and loc[2] in PROVIDER_TYPES:
        del loc[2]
    name = bool(loc) and loc[-1] == "[key]"  # the provider name itself is wrong
    if name:
        loc.pop()
    ctx = err.get("ctx") or {}
    message = err["msg"].removeprefix("Value error, ")
    kind = err["type"]
    if kind == "extra_forbidden":
        message = UNKNOWN_KEY
    elif kind in ("union_tag_not_found", "union_tag_invalid"):
        loc.append("type")
        message = _type_message(kind, ctx)
    elif isinstance(ctx.get("error"), FieldProblem):
        loc += ctx["error"].key
    return tuple(loc), name, message


def _type_message(kind: str, ctx: dict[str, Any]) -> str:
    choices = "one of " + ", ".join(PROVIDER_TYPES)
    if kind == "union_tag_not_found":
        return f"missing ({choices})"
    tag = str(ctx.get("tag", ""))[:40]
    return f"{tag!r} is not a provider type ({choices})"


SECRET_KEYS = frozenset({"client_secret", "password", "refresh_token", "key", "state_key"})
SECRET_PATHS = frozenset({"store.url"})
"""Secrets whose key name alone says nothing (a provider's ``url`` is none)."""


def inline_secret_warnings(path: Path | str) -> list[str]:
    """Warnings for secrets written into a config file that others can read.

    A secret given as ``{env: ...}`` or ``{file: ...}`` is fine anywhere; one
    written inline is only as private as the file.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = read_yaml(path.read_text(encoding="utf-8"), str(path)).data
    except (OSError, UnicodeDecodeError, ConfigError):
        return []
    if not mode & 0o077:
        return []
    inline = sorted(_inline_secrets(data, ""))
    if not inline:
        return []
    return [
        f"{path}: {key} is written inline and the file is readable by other users"
        f" (mode {mode & 0o777:o}); use {{env: ...}} or {{file: ...}}, or chmod 600 {path}"
        for key in inline
    ]


def _inline_secrets(data: object, prefix: str) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            secret = key in SECRET_KEYS or where in SECRET_PATHS
            if secret and isinstance(value, str) and value != "":
                found.append(where)
            else:
                found += _inline_secrets(value, where)
    return found
