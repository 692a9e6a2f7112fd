"""``broker health``, ``broker wait`` and ``broker token``: the broker's probes and shell helper.

For health checks, init containers, entrypoint scripts and shells, so they import nothing but
the standard library (a probe that runs every few seconds should not load a web framework):
:mod:`broker.entry` sends these commands here before the rest of the CLI is imported.

* ``broker health [--ready]``: ``GET /healthz`` (or ``/readyz``); exit 0 when it answers 200.
* ``broker wait [--ready] [--timeout 60]``: the same, asked again until it holds or the time
  is up: for an app that must not start before a token exists.
* ``broker token <provider> [--raw | --header | --env]``: the token, as oidc-agent's users
  know the formats: the bare token (default), an ``Authorization: Bearer ...`` line, or
  ``export BROKER_TOKEN=...`` lines for ``eval``.

The broker: ``--url``, else ``$BROKER_URL``, else the address the broker wrote to
``$BROKER_ADDRESS_FILE`` (its ``address_file``), else ``http://127.0.0.1:8181``; its key:
``$BROKER_KEY``, else the file ``$BROKER_KEY_FILE`` names. Exit status: 0 as asked, 1 not
(not healthy, not ready in time, no token), 2 a usage error, 4 the broker did not answer;
``broker health`` exits 1 for all of those, as a HEALTHCHECK must (2 is reserved there).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from broker.core.errors import BrokerError

DEFAULT_URL = "http://127.0.0.1:8181"
COMMANDS = ("health", "wait", "token")
EXIT_NOT = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4


class Unreachable(BrokerError):
    """The broker did not answer (refused, timed out, not HTTP)."""


def add_light_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = commands.add_parser("health", help="exit 0 when the broker is alive (or --ready)")
    _common(health)
    health.add_argument("--ready", action="store_true", help="ask /readyz: every provider serves")
    wait = commands.add_parser(
        "wait", help="wait until the broker is alive (or --ready); exit 1 at --timeout"
    )
    _common(wait)
    wait.add_argument("--ready", action="store_true", help="wait for /readyz, not /healthz")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    token = commands.add_parser("token", help="print a provider's token for a shell")
    _common(token)
    token.add_argument("provider")
    shape = token.add_mutually_exclusive_group()
    shape.add_argument("--raw", action="store_true", help="the bare token (the default)")
    shape.add_argument("--header", action="store_true", help="an Authorization: Bearer line")
    shape.add_argument("--env", action="store_true", help="export lines, for eval")
    token.add_argument(
        "--name", default="BROKER_TOKEN", help="the variable --env sets (BROKER_TOKEN)"
    )
    token.add_argument(
        "--min-valid", type=int, help="seconds the token must stay valid (refreshes first)"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the broker (default $BROKER_URL, else 127.0.0.1:8181)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broker")
    add_light_parsers(parser.add_subparsers(dest="command", required=True))
    return run_light(parser.parse_args(argv))


def run_light(args: argparse.Namespace) -> int:
    base = broker_url(args.url)
    if not base.startswith(("http://", "https://", "unix:")):
        print(
            f"broker {args.command}: the URL must be http://, https:// or unix:/path",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        key = broker_key()
        if args.command == "health":
            return _health(base, args.ready, key)
        if args.command == "wait":
            return _wait(base, args.ready, args.timeout, key)
        return _token(base, args, key)
    except ValueError as exc:
        print(f"broker {args.command}: {exc}", file=sys.stderr)
        return _health_status(args, EXIT_USAGE)
    except Unreachable as exc:
        print(f"broker {args.command}: the broker at {base} did not answer: {exc}", file=sys.stderr)
        return _health_status(args, EXIT_UNREACHABLE)


def _health_status(args: argparse.Namespace, status: int) -> int:
    """``broker health`` fails with 1 whatever went wrong: it is a HEALTHCHECK command, whose
    contract is 0 healthy, 1 unhealthy, 2 reserved (Docker's reference); its message says
    which failure it was. The other commands keep their distinct codes."""
    return EXIT_NOT if args.command == "health" else status


def _health(base: str, ready: bool, key: str | None) -> int:
    status, body = _get(f"{base}/{'readyz' if ready else 'healthz'}", key)
    if status == 200:
        return 0
    print(f"broker health: HTTP {status}: {_brief(body)}", file=sys.stderr)
    return EXIT_NOT


def _wait(base: str, ready: bool, timeout: float, key: str | None) -> int:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while True:
        try:
            status, body = _get(f"{base}/{'readyz' if ready else 'healthz'}", key)
        except Unreachable as exc:
            last = str(exc)
        else:
            if status == 200:
                return 0
            last = f"HTTP {status}: {_brief(body)}"
        if time.monotonic() >= deadline:
            what = "ready" if ready else "up"
            print(f"broker wait: {base} not {what} after {timeout:g} s ({last})", file=sys.stderr)
            return EXIT_NOT
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))


def _token(base: str, args: argparse.Namespace, key: str | None) -> int:
    if not args.name.isidentifier():
        raise ValueError(f"--name {args.name!r} is not a shell variable name")
    query = f"?min_valid={args.min_valid}" if args.min_valid is not None else ""
    provider = urllib.parse.quote(args.provider, safe="")
    status, body = _get(f"{base}/token/{provider}{query}", key)
    data = body if isinstance(body, dict) else {}
    token = data.get("access_token")
    if status != 200 or not isinstance(token, str):
        print(f"broker token: HTTP {status}: {_brief(body)}", file=sys.stderr)
        return EXIT_NOT
    if args.header:
        print(f"Authorization: Bearer {token}")
    elif args.env:
        print(f"export {args.name}={shlex.quote(token)}")
        expires = data.get("expires_at")
        if isinstance(expires, str):
            print(f"export {args.name}_EXPIRES_AT={shlex.quote(expires)}")
    else:
        print(token)
    return 0


def _get(url: str, key: str | None) -> tuple[int, Any]:
    """The status and JSON body (or None) of ``GET url``; Unreachable when none came."""
    if url.startswith("unix:"):
        return _get_unix(url, key)
    # http(s) only: run_light refuses any other scheme before a request is made.
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    # No proxy: the broker refuses proxied requests, and it is local.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as answer:
            return answer.status, _json(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(str(reason) or type(exc).__name__) from None


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the broker's ``listen_unix``), which urllib cannot speak."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _get_unix(url: str, key: str | None) -> tuple[int, Any]:
    """``GET`` on ``unix:/path/to.sock/route``: the socket is the part up to ``.sock``, or
    the whole path of a socket file, the route what follows it."""
    path, route = _split_unix(url.removeprefix("unix:").removeprefix("//"))
    headers = {"Accept": "application/json", "Host": "localhost"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    connection = _UnixConnection(path, timeout=5)
    try:
        connection.request("GET", route, headers=headers)
        answer = connection.getresponse()
        return answer.status, _json(answer.read())
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()


def _split_unix(rest: str) -> tuple[str, str]:
    """``/run/broker/broker.sock/healthz`` → (``/run/broker/broker.sock``, ``/healthz``)."""
    parts = rest.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end]) or "/"
        if os.path.exists(candidate) and not os.path.isdir(candidate):
            return candidate, "/" + "/".join(parts[end:])
    return rest, "/"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _brief(body: Any) -> str:
    if isinstance(body, dict):
        if "error" in body:
            return f"{body.get('message', '')} [{body['error']}]"
        if "ready" in body:
            states = body.get("providers") or {}
            pending = sorted(name for name, p in states.items() if p.get("state") != "ready")
            return "not ready" + (f": {', '.join(pending)}" if pending else "")
    return "no JSON answer"


def broker_url(given: str | None) -> str:
    """The broker's base URL: *given* (``--url``), else ``$BROKER_URL``, else the ``url`` in
    the file ``$BROKER_ADDRESS_FILE`` names (the broker writes it once it listens), else the
    default."""
    return (given or os.environ.get("BROKER_URL") or _written_url() or DEFAULT_URL).rstrip("/")


def _written_url() -> str | None:
    """The ``url`` the broker wrote to ``$BROKER_ADDRESS_FILE``, if it has written one.

    A missing or unreadable file means no broker has listened yet (or it listens on a Unix
    socket only): the default is asked, and refuses, like a broker that is not up.
    """
    path = os.environ.get("BROKER_ADDRESS_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            written = json.load(file)
        url, unix = written.get("url"), written.get("unix")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(url, str):
        return url
    return f"unix:{unix}" if isinstance(unix, str) else None


def broker_key() -> str | None:
    """The client key in ``$BROKER_KEY``, else in the file ``$BROKER_KEY_FILE`` names, or
    None. Raises ValueError (naming the variable) when that file cannot be read."""
    if os.environ.get("BROKER_KEY"):
        return os.environ["BROKER_KEY"]
    path = os.environ.get("BROKER_KEY_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as key_file:
                return key_file.read().strip()
        except OSError as exc:
            raise ValueError(f"BROKER_KEY_FILE {path}: {exc.strerror}") from None
    return None
