"""Reading the config file: YAML 1.2, no duplicate keys, and the line of every key.

The loader is ruamel.yaml's safe loader in pure Python. It implements YAML 1.2,
where ``0123`` is the number 123 and ``yes``/``on`` are strings; YAML 1.1
loaders (PyYAML) read them as octal 83 and ``True``, which silently changed
passwords and client ids. A key given twice in one mapping is an error naming
both lines (a YAML loader would otherwise keep the last one without a word).

Every key's line is remembered (:attr:`YamlDoc.lines`) so that a validation
error can point at it: ``config.yaml:12: providers.hiro.password: ...``.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from broker.core.errors import ConfigError

KeyPath = tuple[str, ...]
"""A key's place in the document: ``("providers", "hiro", "password")``; list items by index."""

_ZERO_PADDED = re.compile(r"[-+]?0[0-9_]+")


class ZeroPaddedInt(int):
    """An integer written with a leading zero (``0640``).

    YAML 1.2 reads it as decimal, which is right for a port and wrong for a file
    mode: :class:`broker.config.sinks.SinkConfig` reads these digits as octal, as chmod does.
    """


class _Constructor(SafeConstructor):
    def construct_yaml_int(self, node: Any) -> Any:
        value = super().construct_yaml_int(node)
        if _ZERO_PADDED.fullmatch(str(node.value)):
            return ZeroPaddedInt(value)
        return value


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed config file: its data and the 1-based line of every key."""

    data: object
    lines: Mapping[KeyPath, int]

    def line_of(self, path: KeyPath) -> int | None:
        """The line of *path*, or of its nearest ancestor written in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def read_yaml(text: str, source: str) -> YamlDoc:
    """Parse *text*; raise ConfigError naming *source* and the line of any problem.

    Messages never quote a value: ruamel's own duplicate-key message does, so it is
    replaced by one that names the key and its two lines.
    """
    yaml = YAML(typ="safe", pure=True)
    yaml.Constructor = _Constructor
    node: Node | None = None
    try:
        node = yaml.compose(text)
        if node is None:  # an empty file or only comments
            return YamlDoc(None, {})
        data = yaml.constructor.construct_document(node)
    except DuplicateKeyError as exc:
        raise ConfigError(_duplicate_message(exc, node, yaml, source)) from None
    except MarkedYAMLError as exc:
        raise ConfigError(_syntax_message(exc, source)) from None
    except YAMLError:
        raise ConfigError(f"{source}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    doc = YamlDoc(data, _key_lines(node, yaml))
    # The loader and its node graph are reference cycles: free them now, before
    # validation builds the settings on top (with 10,000 providers they held
    # ~20 MB, and the process's peak, which it keeps as its size, rose with them).
    del node, yaml
    gc.collect()
    return doc


def _syntax_message(exc: MarkedYAMLError, source: str) -> str:
    where = ""
    mark = exc.problem_mark
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    problem = exc.problem or "invalid YAML"
    return f"{source}: not valid YAML{where}: {problem}"


def _duplicate_message(exc: DuplicateKeyError, root: Node | None, yaml: YAML, source: str) -> str:
    mark = exc.problem_mark
    for path, node in _walk(root, (), yaml, set()):
        keys = [key for key, _ in node.value] if isinstance(node, MappingNode) else []
        again = next((k for k in keys if _at(k, mark)), None)
        if again is None:
            continue
        name = _key_text(again, yaml)
        first = next(k for k in keys if _key_text(k, yaml) == name)
        dotted = ".".join((*path, name))
        return (
            f"{source}:{mark.line + 1}: {dotted}: duplicate key (first at line"
            f" {first.start_mark.line + 1}); remove or rename one"
        )
    return f"{source}: not valid YAML at line {mark.line + 1}: a key is given twice"


def _at(node: Node, mark: Any) -> bool:
    return bool(node.start_mark.line == mark.line and node.start_mark.column == mark.column)


def _key_lines(root: Node, yaml: YAML) -> dict[KeyPath, int]:
    """The line of each key and list item."""
    lines: dict[KeyPath, int] = {}
    for path, node in _walk(root, (), yaml, set()):
        for child_path, key, _ in _children(node, path, yaml):
            lines.setdefault(child_path, key.start_mark.line + 1)
    return lines


def _walk(
    node: Node | None, path: KeyPath, yaml: YAML, seen: set[int]
) -> Iterator[tuple[KeyPath, Node]]:
    """Each mapping and list node with its key path, in document order.

    An alias's subtree is walked once, at its anchor: an error inside a second
    use points at the line that uses the alias (and a recursive alias ends).
    """
    if not isinstance(node, MappingNode | SequenceNode) or id(node) in seen:
        return
    seen.add(id(node))
    yield path, node
    for child_path, _, value in _children(node, path, yaml):
        yield from _walk(value, child_path, yaml, seen)


def _children(node: Node, path: KeyPath, yaml: YAML) -> list[tuple[KeyPath, Node, Node]]:
    """(path, key node, value node) of each entry; a list item is its own key node."""
    if isinstance(node, MappingNode):
        return [((*path, _key_text(k, yaml)), k, v) for k, v in node.value]
    if isinstance(node, SequenceNode):
        return [((*path, str(i)), v, v) for i, v in enumerate(node.value)]
    return []


def _key_text(node: Node, yaml: YAML) -> str:
    """A key as the data holds it, as text: ``0123`` is 123 in YAML 1.2, so ``"123"``."""
    if isinstance(node, ScalarNode):
        return str(yaml.constructor.construct_object(node))
    return str(node.value)
