"""What ``broker check`` verifies beyond the config's syntax.

Each check runs the code ``serve`` runs, so its answer cannot drift from what
``serve`` will do:

* :func:`storage_problems`: the state directory and every token sink's
  directory accept a file now (``StateStore``'s and ``FileSink``'s own start-up
  checks).
* :func:`cleartext_warnings`: token URLs in plain http to another host.
"""

from __future__ import annotations

import httpx

from broker.app import open_store
from broker.config import BrokerSettings
from broker.protocols import TokenProtocol, build_protocol
from broker.security import is_loopback_address
from broker.sinks import FileSink, SinkError
from broker.state import StateError

# -- storage --------------------------------------------------------------------------


def storage_problems(settings: BrokerSettings) -> list[tuple[str, str]]:
    """``(config key, problem)`` for every directory ``serve`` could not write to.

    Runs serve's own checks: opening the state directory (which creates it when
    missing, as serve does, and proves it writable) and each sink's check.
    """
    problems: list[tuple[str, str]] = []
    if settings.state_dir is not None:
        try:
            open_store(settings)
        except StateError as exc:
            problems.append(("state_dir", str(exc)))
    for name, provider in settings.providers.items():
        if provider.sink is None:
            continue
        try:
            FileSink(provider.sink, name).check()
        except SinkError as exc:
            problems.append((f"providers.{name}.sink.path", str(exc)))
    return problems


# -- plain http -----------------------------------------------------------------------


def token_url(protocol: TokenProtocol) -> httpx.URL:
    """Where this provider's token requests go, read from a request built, never sent."""
    if protocol.can_login:
        return protocol.login_request().url
    # A placeholder: only the URL of this request is read.
    return protocol.refresh_request("unused").url


def cleartext_warnings(settings: BrokerSettings) -> list[str]:
    """One warning per provider whose token requests would cross a network unencrypted."""
    warnings = []
    for name, provider in settings.providers.items():
        url = token_url(build_protocol(provider))
        if url.scheme == "http" and not is_loopback_address(url.host):
            warnings.append(
                f"providers.{name}: token requests go to {_shown(url)} in plain http:"
                " passwords, client secrets and tokens cross the network unencrypted;"
                " use https://"
            )
    return warnings


def _shown(url: httpx.URL) -> str:
    """Scheme, host, port and path: no user:password@ and no query, which could hold secrets."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{host}{port}{url.path}"
