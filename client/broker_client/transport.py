"""Where the broker is and how it is reached: its URL (``unix:`` included) and the httpx clients.

Sends the calls that :mod:`broker_client.cache` plans, sync or async, with the caller's
httpx client or a short-lived one of our own, and hands back the answer for the cache to read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TypedDict

import httpx

from broker_client.cache import BrokerCall

DEFAULT_BROKER_URL = "http://127.0.0.1:8181"
BROKER_URL_ENV = "BROKER_URL"
BROKER_KEY_ENV = "BROKER_KEY"
BROKER_KEY_FILE_ENV = "BROKER_KEY_FILE"

UNIX_SOCKET_BASE = "http://localhost"
"""The URL requests to a Unix socket are made to: ``localhost`` is a Host the broker takes."""


def resolve_broker_url(broker_url: str | None) -> str:
    """*broker_url*, else ``$BROKER_URL``, else the default; without a trailing slash."""
    base = broker_url or os.environ.get(BROKER_URL_ENV) or DEFAULT_BROKER_URL
    return base.rstrip("/")


def with_client_key(headers: Mapping[str, str] | None) -> dict[str, str]:
    """*headers* for the broker, with ``Authorization: Bearer <key>`` added from ``$BROKER_KEY``,
    else from the file ``$BROKER_KEY_FILE`` names, unless *headers* has an Authorization of
    its own (the same variables ``broker token`` reads). Raises ValueError naming the variable
    when that file cannot be read: a key the app was given but cannot use is a setup error.
    """
    given = dict(headers or {})
    if any(name.lower() == "authorization" for name in given):
        return given
    key = os.environ.get(BROKER_KEY_ENV)
    path = os.environ.get(BROKER_KEY_FILE_ENV)
    if not key and path:
        try:
            with open(path, encoding="utf-8") as key_file:
                key = key_file.read().strip()
        except OSError as exc:
            msg = f"{BROKER_KEY_FILE_ENV} {path}: {exc.strerror or exc}"
            raise ValueError(msg) from None
    if key:
        given["Authorization"] = f"Bearer {key}"
    return given


def unix_socket_path(broker_url: str) -> str | None:
    """The socket path of a ``unix:`` broker URL; None for an ``http(s)://`` one."""
    if not broker_url.startswith("unix:"):
        return None
    path = broker_url.removeprefix("unix:")
    if path.startswith("//"):  # unix:///run/broker/broker.sock
        path = path[2:]
    if not path.startswith("/"):
        msg = f"a unix: broker URL needs an absolute socket path: {broker_url!r}"
        raise ValueError(msg)
    return path


class _OwnClientOptions(TypedDict):
    trust_env: bool
    follow_redirects: bool


_OWN_CLIENT = _OwnClientOptions(
    # No proxy between an app and its (local or compose-network) broker.
    trust_env=False,
    # httpx's default, said here so it stays: a redirect is an answer to report (http_3xx),
    # not one to follow with the broker headers (a client key) to wherever it points.
    follow_redirects=False,
)
"""The settings of our own clients, sync and async alike (the timeout is set per request)."""


class BrokerTransport:
    """Sends a :class:`BrokerCall` to the broker at a resolved URL (see :func:`resolve_broker_url`).

    ``send_sync`` and ``send_async`` raise ``httpx.HTTPError`` when no answer came; any
    answer, an error status included, is returned for the cache to read.
    """

    def __init__(
        self,
        broker_url: str,
        *,
        timeout: float,
        client: httpx.Client | None,
        async_client: httpx.AsyncClient | None,
    ) -> None:
        self._socket = unix_socket_path(broker_url)
        self._base = UNIX_SOCKET_BASE if self._socket is not None else broker_url
        self._timeout = timeout
        self._given_client = client
        self._given_async_client = async_client

    def send_sync(self, call: BrokerCall) -> httpx.Response:
        with self._client_for_call() as client:
            return client.request(
                call.method, self._base + call.path, headers=call.headers, timeout=self._timeout
            )

    async def send_async(self, call: BrokerCall) -> httpx.Response:
        async with self._async_client_for_call() as client:
            return await client.request(
                call.method, self._base + call.path, headers=call.headers, timeout=self._timeout
            )

    @contextlib.contextmanager
    def _client_for_call(self) -> Iterator[httpx.Client]:
        """The caller's client (left open), else one of our own for this call."""
        if self._given_client is not None:
            yield self._given_client
            return
        transport = httpx.HTTPTransport(uds=self._socket) if self._socket is not None else None
        with httpx.Client(transport=transport, **_OWN_CLIENT) as client:
            yield client

    @contextlib.asynccontextmanager
    async def _async_client_for_call(self) -> AsyncIterator[httpx.AsyncClient]:
        """The caller's client (left open), else one of our own for this call.

        A client per call: calls are rare (once per token lifetime) and a short-lived client
        is bound to no event loop and leaks no connections.
        """
        if self._given_async_client is not None:
            yield self._given_async_client
            return
        transport = httpx.AsyncHTTPTransport(uds=self._socket) if self._socket is not None else None
        async with httpx.AsyncClient(transport=transport, **_OWN_CLIENT) as client:
            yield client
