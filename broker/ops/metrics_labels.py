"""Bounded label values for the broker's metrics: what cannot be a safe identifier becomes
``other``, so that no secret (nor an unbounded number of series) reaches a metrics database
(see :mod:`broker.ops.metrics`)."""

from __future__ import annotations

import re
from typing import Final

from broker.core.names import PROVIDER_NAME

OTHER: Final = "other"
"""The label value used when a value is not a safe identifier."""

_CODE = re.compile(r"[a-z0-9_]{1,40}")
_CLIENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def code_label(value: str) -> str:
    """*value* if it is a short identifier (``[a-z0-9_]{1,40}``), else ``other``."""
    return value if _CODE.fullmatch(value) else OTHER


def name_label(value: str) -> str:
    """*value* if it looks like a provider name, else ``other``."""
    return value if PROVIDER_NAME.fullmatch(value) else OTHER


def client_label(value: str | None) -> str:
    """A configured client name, ``anonymous`` for None, ``other`` when it is not a plain name."""
    if value is None:
        return "anonymous"
    return value if _CLIENT.fullmatch(value) else OTHER
