"""What a fake saw: every incoming request, parsed once, kept as an immutable record."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from broker.fakes.wire import FORM, media_type


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake received it.

    ``headers`` has lower-cased names. ``form`` is set only for
    ``application/x-www-form-urlencoded`` bodies and ``json`` only for JSON bodies that parse;
    both are ``None`` otherwise. ``at`` is wall-clock time (``time.time()``), not the fake's
    possibly skewed clock, so tests can order requests against real events.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] | None
    json: Any | None
    at: float


def _is_json(mtype: str) -> bool:
    return mtype == "application/json" or mtype.endswith("+json")


async def capture(request: Request) -> RecordedRequest:
    """Read the body of ``request`` and turn it into a :class:`RecordedRequest`."""
    body = await request.body()
    mtype = media_type(request.headers.get("content-type"))
    form: dict[str, str] | None = None
    parsed_json: Any | None = None
    if mtype == FORM:
        # Forms are parsed here rather than with request.form(), which needs python-multipart.
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif _is_json(mtype) and body:
        try:
            parsed_json = json.loads(body)
        except ValueError:
            parsed_json = None
    return RecordedRequest(
        method=request.method,
        path=request.url.path,
        query=dict(request.query_params),
        headers={name.lower(): value for name, value in request.headers.items()},
        form=form,
        json=parsed_json,
        at=time.time(),
    )
