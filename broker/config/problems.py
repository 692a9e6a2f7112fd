"""A model validator's complaint about one key: the config models' shared error type.

Its own module, below every model, so that models may raise it without importing each
other (listening and sinks share their owner/group types; providers holds the sinks).
"""

from __future__ import annotations

from broker.config.yamlfile import KeyPath


class FieldProblem(ValueError):
    """A model validator's complaint about one of the model's keys.

    pydantic places a model validator's error at the model; the error formatter
    appends *key*, so that the message points at (and its source names) the key.
    """

    def __init__(self, key: KeyPath, message: str) -> None:
        super().__init__(message)
        self.key = key
