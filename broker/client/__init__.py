"""The client helpers under their old name: ``broker.client`` is :mod:`broker_client`.

The helpers are their own distribution, ``credential-broker-client`` (``client/`` in this
repository), which apps install without the broker; import them as ``broker_client``. This
name stays for code written before, wherever the broker is installed (it depends on the
client at its own version). It holds the same objects, not copies
(``broker.client.BrokerAuth is broker_client.BrokerAuth``), and only the package's names:
its modules are ``broker_client.cache`` and so on, with no ``broker.client.cache``.
"""

from broker_client import (
    DEFAULT_BROKER_URL,
    BrokerAuth,
    BrokerError,
    BrokerRequestsAuth,
    BrokerToken,
    BrokerUnavailable,
)

# Importable from here before, though not documented API.
from broker_client import unix_socket_path as unix_socket_path

__all__ = [
    "DEFAULT_BROKER_URL",
    "BrokerAuth",
    "BrokerError",
    "BrokerRequestsAuth",
    "BrokerToken",
    "BrokerUnavailable",
]
