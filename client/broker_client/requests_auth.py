""":class:`BrokerRequestsAuth`: bearer tokens from the broker for a ``requests`` session.

``requests`` is imported for type checking only: apps that use this helper bring it (or install
the ``[requests]`` extra).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from broker_client.helper import TokenHelper, bearer
from broker_client.source import TokenSource

if TYPE_CHECKING:
    import requests

_UNSEEKABLE = -1


class BrokerRequestsAuth(TokenHelper):
    """The :class:`BrokerAuth` of ``requests``: ``session.auth = BrokerRequestsAuth("hiro")``.

    requests calls it with each prepared request; it sets the bearer token and registers a
    response hook that, on a 401, forces one refresh at the broker and sends the request once
    more on the same connection adapter. A body that cannot be rewound (a generator) is not
    sent again: the 401 is returned as is. Arguments are those of :class:`BrokerAuth`
    (``async_client`` aside); the broker is called with httpx, so requests is needed only by
    the app.
    """

    def __init__(
        self,
        provider: str,
        *,
        broker_url: str | None = None,
        refresh_before: float = 30.0,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
    ) -> None:
        self._source = TokenSource(
            provider,
            broker_url=broker_url,
            refresh_before=refresh_before,
            timeout=timeout,
            headers=headers,
            clock=clock,
            client=client,
            async_client=None,
        )

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._source.token_sync()
        request.headers["Authorization"] = bearer(token)
        body_pos: int | None = None
        body: Any = request.body
        if body is not None and not isinstance(body, str | bytes):
            try:
                body_pos = int(body.tell())
            except (AttributeError, OSError, ValueError):
                body_pos = _UNSEEKABLE
        request.register_hook(
            "response", functools.partial(self._on_response, token=token, body_pos=body_pos)
        )
        return request

    def _on_response(
        self, response: requests.Response, *, token: str, body_pos: int | None, **send_kwargs: Any
    ) -> requests.Response:
        if response.status_code != 401 or body_pos == _UNSEEKABLE:
            return response
        new_token = self._source.refresh_sync(stale=token)
        # Free the connection before sending again (as requests' own HTTPDigestAuth does).
        _ = response.content
        response.close()
        retry = response.request.copy()
        if body_pos is not None:
            body: Any = retry.body
            body.seek(body_pos)
        retry.headers["Authorization"] = bearer(new_token)
        # The adapter sends without running hooks, so this response is final: no loop.
        connection: Any = response.connection
        answer: requests.Response = connection.send(retry, **send_kwargs)
        answer.history.append(response)
        answer.request = retry
        return answer
