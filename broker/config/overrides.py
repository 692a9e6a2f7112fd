"""Environment and command-line overrides on top of the YAML file, and where each value came from.

Environment variables, as :func:`merge_environment` maps them:

* ``BROKER_`` + the key path, nested keys joined by ``__``: ``BROKER_PORT``,
  ``BROKER_REFRESH__MARGIN``, ``BROKER_PROVIDERS__HIRO__PASSWORD``. Keys are
  case-insensitive (``broker_port`` works too).
* Provider and client names match case-insensitively with ``_`` and ``-``
  equivalent, as a shell cannot export ``BROKER_PROVIDERS__MY-API__...``:
  ``BROKER_PROVIDERS__MY_API__PASSWORD`` sets provider ``my-api``. A variable
  can only change a provider or client the file configures; one that names
  none, or that matches two (``my-api`` and ``my_api``), is an error.
* Values are strings, validated like the file's (pydantic's lax mode reads
  ``"9000"`` as a number, ``"true"`` as a boolean). A list or mapping field
  (``allowed_hosts``, ``clients.<c>.providers``, ``headers``, ``refresh`` ...)
  takes JSON: ``BROKER_CLIENTS__OPS__PROVIDERS='["hiro"]'``; a JSON value
  replaces the file's whole value there. Secret fields are never read as JSON.
* A top-level ``BROKER_*`` variable that is not a settings key is ignored
  (programs in the same environment set ``BROKER_URL``, ``BROKER_KEY`` ...),
  but a nested one (with ``__``) that names no real key is an error.

Precedence, highest first: command line, environment, file, defaults. Each
overridden key path is recorded with its origin (``environment: BROKER_PORT``,
``command line: --port``) so that a validation error there names the variable
or option, not the file.

This module knows the settings only through their pydantic models
(:func:`shape_of` reads the field annotations), so a new key needs no change here.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from broker.config.secrets import is_secret_validator
from broker.config.yamlfile import KeyPath

ENV_PREFIX = "BROKER_"
NESTED = "__"

Kind = Literal["model", "named", "list", "mapping", "secret", "scalar"]
UNKNOWN_KEY = "unknown key (check the spelling; config.example.yaml lists every key)"
Deprecated = Mapping[tuple[type[BaseModel], str], str]
"""(model, key) → why the key is gone; the key is accepted, warned about and dropped."""


@dataclass(frozen=True)
class Shape:
    """What a settings key holds, as far as overriding it is concerned.

    ``model``: a nested block (``refresh``); ``named``: a mapping of names to
    blocks (``providers``); ``list`` / ``mapping``: set whole, as JSON; ``secret``:
    a Secret or Indirect field; ``scalar``: anything else.
    """

    kind: Kind
    models: tuple[type[BaseModel], ...] = ()


def shape_of(annotation: Any) -> Shape:
    """The shape of a field annotated *annotation*."""
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        if any(is_secret_validator(m) for m in metadata):
            return Shape("secret")
        return shape_of(inner)
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return shape_of(members[0])
        if all(_is_model(m) for m in members):
            return Shape("model", tuple(members))
        return Shape("scalar")
    if _is_model(annotation):
        return Shape("model", (annotation,))
    if origin is dict:
        value = shape_of(get_args(annotation)[1])
        return Shape("named", value.models) if value.kind == "model" else Shape("mapping")
    if origin in (list, tuple, set, frozenset):
        return Shape("list")
    return Shape("scalar")


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def field_shape(models: Iterable[type[BaseModel]], key: str) -> Shape | None:
    """The shape of *key* in the first of *models* that has it (providers are a
    union: a key of any provider type counts; validation checks it against the type)."""
    for model in models:
        info = model.model_fields.get(key)
        if info is not None:
            return _info_shape(info)
    return None


def _info_shape(info: FieldInfo) -> Shape:
    # pydantic moves a field's top-level Annotated metadata to info.metadata.
    if any(is_secret_validator(m) for m in info.metadata):
        return Shape("secret")
    return shape_of(info.annotation)


def deprecation(models: Iterable[type[BaseModel]], key: object, table: Deprecated) -> str | None:
    """Why *key* is no longer used in a block of one of *models*, or None."""
    if not isinstance(key, str):
        return None
    return next((table[m, key] for m in models if (m, key) in table), None)


@dataclass
class Layered:
    """The file's data with overrides applied, where they came from, and what was wrong."""

    data: dict[str, Any]
    origins: dict[KeyPath, str] = field(default_factory=dict)
    """Overridden key path → ``environment: BROKER_PORT`` or ``command line: --port``."""
    problems: list[str] = field(default_factory=list)

    def origin_of(self, path: KeyPath) -> tuple[str, KeyPath] | None:
        """The origin of *path* (or of an ancestor set whole) and the rest of the path."""
        for end in range(len(path), 0, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                return origin, path[end:]
        return None


class _EnvProblem(Exception):
    """Why one variable cannot be applied (the message never holds its value)."""


def merge_environment(
    data: Mapping[str, Any],
    environ: Mapping[str, str],
    root: type[BaseModel],
    *,
    source: str,
    deprecated: Deprecated,
) -> Layered:
    """Apply the ``BROKER_*`` variables of *environ* to *data* (not changed: copied
    along each overridden path). *source* names the file in messages."""
    result = Layered(dict(data))
    # Shallow paths first: a JSON block, then variables that change keys inside it.
    for name in sorted(environ, key=lambda n: (n.count(NESTED), n)):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        try:
            _apply_variable(result, name, environ[name], root, source, deprecated)
        except _EnvProblem as problem:
            result.problems.append(f"environment: {name}: {problem}")
    return result


def _apply_variable(
    result: Layered,
    name: str,
    raw: str,
    root: type[BaseModel],
    source: str,
    deprecated: Deprecated,
) -> None:
    target = _env_target(name, result.data, root, source, deprecated)
    if target is None:
        return
    path, shape = target
    origin = f"environment: {name}"
    if path in result.origins:  # the same key in two spellings (BROKER_PORT, broker_port)
        other = result.origins[path].removeprefix("environment: ")
        raise _EnvProblem(f"{'.'.join(path)} is also set by {other}; set it once")
    result.data = _set(result.data, path, _env_value(raw, shape), source)
    result.origins[path] = origin


def apply_command_line(
    layered: Layered, overrides: Mapping[str, Any], root: type[BaseModel]
) -> Layered:
    """Set top-level keys from command-line options (``port`` from ``--port``)."""
    for key, value in overrides.items():
        if key not in root.model_fields:
            msg = f"no settings key {key!r}"  # a programming error, not a user's
            raise ValueError(msg)
        layered.data = {**layered.data, key: value}
        layered.origins = {p: o for p, o in layered.origins.items() if p[0] != key}
        layered.origins[(key,)] = f"command line: --{key.replace('_', '-')}"
    return layered


def _env_target(
    name: str, data: Mapping[str, Any], root: type[BaseModel], source: str, deprecated: Deprecated
) -> tuple[KeyPath, Shape] | None:
    """The key path and shape *name* sets, None for a foreign top-level variable."""
    parts = name[len(ENV_PREFIX) :].lower().split(NESTED)
    shape = Shape("model", (root,))
    path: KeyPath = ()
    here: object = data
    entry = False  # whether the path so far ends at a named entry (providers.hiro)
    for index, part in enumerate(parts):
        entry = shape.kind == "named"
        if entry:
            key = _match_name(part, here, path, source)
            shape = Shape("model", shape.models)
        elif shape.kind == "model":
            child = _child_shape(shape, part, deprecated)
            if child is None:
                if len(parts) == 1:
                    return None
                raise _EnvProblem(f"{'.'.join((*path, part))}: {UNKNOWN_KEY}")
            key, shape = part, child
        else:
            raise _EnvProblem(_too_deep(name, index, path, shape))
        path = (*path, key)
        here = here.get(key) if isinstance(here, Mapping) else None
    if shape.kind == "named":
        raise _EnvProblem(f"{path[-1]}: set one key per variable: {name}__<NAME>__<KEY>")
    if entry:
        raise _EnvProblem(f"{'.'.join(path)}: set one key per variable: {name}__<KEY>")
    return path, shape


def _child_shape(shape: Shape, key: str, deprecated: Deprecated) -> Shape | None:
    if deprecation(shape.models, key, deprecated):
        return Shape("scalar")  # accepted, so that it is warned about and dropped
    return field_shape(shape.models, key)


def _too_deep(name: str, index: int, path: KeyPath, shape: Shape) -> str:
    dotted = ".".join(path)
    if shape.kind in ("list", "mapping"):
        whole = NESTED.join(name.split(NESTED)[:index])
        return f"{dotted} is set whole, as JSON, in {whole}"
    return f"{dotted} takes one value; it has no keys"


def _match_name(part: str, here: object, path: KeyPath, source: str) -> str:
    """The configured name that variable part *part* stands for."""
    what = path[-1].removesuffix("s")  # providers → provider, clients → client
    names = [n for n in here if isinstance(n, str)] if isinstance(here, Mapping) else []
    found = [n for n in names if _fold(n) == _fold(part)]
    if not found:
        raise _EnvProblem(f"no {what} named {part!r} in {source}")
    if len(found) > 1:
        listed = " and ".join(repr(n) for n in found)
        raise _EnvProblem(
            f"matches {what}s {listed} in {source}; rename one (names match with"
            " case, '-' and '_' ignored)"
        )
    return found[0]


def _fold(name: str) -> str:
    return name.lower().replace("-", "_")


def _env_value(raw: str, shape: Shape) -> Any:
    if shape.kind in ("secret", "scalar"):
        return raw  # secrets are never parsed: '{"a": 1}' may well be a password
    try:
        return json.loads(raw)
    except ValueError:
        example = '["a", "b"]' if shape.kind == "list" else '{"key": "value"}'
        raise _EnvProblem(f"not valid JSON; this key takes JSON such as '{example}'") from None


def _set(data: Mapping[str, Any], path: KeyPath, value: Any, source: str) -> dict[str, Any]:
    """A copy of *data* with *path* set to *value*, copying only the dicts on the path."""
    key, rest = path[0], path[1:]
    if not rest:
        return {**data, key: value}
    inner = data.get(key)
    if inner is None:
        inner = {}  # a block the file leaves out (or empty): the variable starts it
    if not isinstance(inner, Mapping):
        raise _EnvProblem(f"{key} in {source} is not a mapping, so it has no keys to set")
    return {**data, key: _set(inner, rest, value, source)}


def strip_deprecated(
    data: Any, models: tuple[type[BaseModel], ...], table: Deprecated, path: KeyPath = ()
) -> tuple[Any, list[tuple[KeyPath, str]]]:
    """*data* without the keys *table* lists, and each removed key's path and reason.

    Only dicts that change are copied.
    """
    if not isinstance(data, Mapping):
        return data, []
    removed: list[tuple[KeyPath, str]] = []
    out: dict[Any, Any] = {}
    for key, value in data.items():
        reason = deprecation(models, key, table)
        if reason is not None:
            removed.append(((*path, str(key)), reason))
            continue
        out[key], found = _strip_child(value, models, key, table, (*path, str(key)))
        removed += found
    return (out if removed else data), removed


def _strip_child(
    value: Any, models: tuple[type[BaseModel], ...], key: object, table: Deprecated, path: KeyPath
) -> tuple[Any, list[tuple[KeyPath, str]]]:
    shape = field_shape(models, key) if isinstance(key, str) else None
    if shape is None or shape.kind not in ("model", "named"):
        return value, []
    if shape.kind == "model":
        return strip_deprecated(value, shape.models, table, path)
    if not isinstance(value, Mapping):
        return value, []
    removed: list[tuple[KeyPath, str]] = []
    entries: dict[Any, Any] = {}
    for name, entry in value.items():
        entries[name], found = strip_deprecated(entry, shape.models, table, (*path, str(name)))
        removed += found
    return (entries if removed else value), removed
