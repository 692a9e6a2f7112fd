"""Client helpers: let an app's HTTP client take its bearer tokens from the broker.

The distribution ``credential-broker-client``: it needs httpx alone, none of the broker.

With httpx (sync or async)::

    import httpx

    from broker_client import BrokerAuth

    client = httpx.Client(auth=BrokerAuth("hiro"))       # or httpx.AsyncClient(auth=...)

With requests (``pip install 'credential-broker-client[requests]'``)::

    import requests

    from broker_client import BrokerRequestsAuth

    session = requests.Session()
    session.auth = BrokerRequestsAuth("hiro")

The broker's URL comes from ``broker_url=``, else the ``BROKER_URL`` environment variable,
else ``http://127.0.0.1:8181``; ``unix:/run/broker/broker.sock`` (or ``unix:///run/...``)
reaches a broker's Unix socket (``listen_unix``), where it can know the app by its uid.

A token is fetched with ``GET /token/<provider>`` and reused
until ``refresh_before`` seconds before it expires (the broker refreshes well ahead of that, so
a fetch is a memory read on the broker's side). When the API answers 401 the helper asks the
broker for a new token once (``POST /token/<provider>/refresh`` with ``If-Match:`` the refused
token's ETag, so the broker answers at once with a newer token if one exists and refreshes only
if the refused one is still current), sends the request again once and returns whatever that
answer is: a second 401 reaches the caller, there is no loop.

The client key for a broker with ``clients:`` comes from ``$BROKER_KEY``, else from the file
``$BROKER_KEY_FILE`` names (read once, when the helper is made), as for ``broker token``.
``headers=`` are sent to the broker only (an ``Authorization`` there replaces that key),
never to the API.
A broker that cannot be reached or answers with an error raises :class:`BrokerUnavailable`,
whose message carries the broker's error code and message and never a token.

``requests`` is no dependency of this package (only of its ``[requests]`` extra): it never
imports it, and :class:`BrokerRequestsAuth` is a plain callable, which is all
``requests.auth.AuthBase`` is.

The modules, each with one job:

* :mod:`~broker_client.cache`: the token cache and the broker's protocol, without I/O;
* :mod:`~broker_client.transport`: the broker's URL and the httpx clients that reach it;
* :mod:`~broker_client.source`: the cache with its locks, sending sync or async;
* :mod:`~broker_client.helper`: what both helpers offer besides auth;
* :mod:`~broker_client.httpx_auth`, :mod:`~broker_client.requests_auth`: the helpers;
* :mod:`~broker_client.errors`: what they raise.
"""

from broker_client.cache import BrokerToken
from broker_client.errors import BrokerError, BrokerUnavailable
from broker_client.httpx_auth import BrokerAuth
from broker_client.requests_auth import BrokerRequestsAuth
from broker_client.transport import DEFAULT_BROKER_URL

# Importable from here as before the split into modules, though not documented API.
from broker_client.transport import unix_socket_path as unix_socket_path

__all__ = [
    "DEFAULT_BROKER_URL",
    "BrokerAuth",
    "BrokerError",
    "BrokerRequestsAuth",
    "BrokerToken",
    "BrokerUnavailable",
]
