"""``broker login <provider>``: a person logs in once, the running broker keeps the session.

Talks to the running broker over its API (:mod:`broker.web.login_routes`), with a client key
that has the ``login`` right. The broker is found as the client helpers find it: ``--url``,
else the listen address of ``--config``, else ``$BROKER_URL``, else ``http://127.0.0.1:8181``.
The key: ``$BROKER_KEY``, else the file ``$BROKER_KEY_FILE`` names, else the key of
``--client NAME`` in ``--config``; none when the broker has no clients configured.

* default: asks for a one-time login link, prints it, opens a browser where one exists, and
  waits for the outcome;
* ``--no-browser``: prints the link for a browser elsewhere, and reads back the address that
  browser ended on (as ``gcloud auth login --no-browser`` does);
* ``--device``: a device login (RFC 8628): prints a code to enter at the identity
  provider's page on any device; the broker polls for the approval;
* ``--refresh-token -``: reads a refresh token from standard input (never echoed, never in
  argv or shell history) and gives it to the broker, which checks it with one refresh.

Exit status: 0 logged in, 1 the login failed, 2 a usage or configuration error, 4 the broker
could not be reached.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

import httpx

from broker.config.load import load_config
from broker.config.settings import BrokerSettings
from broker.core.addresses import local_url
from broker.light_cli import broker_key, broker_url

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4

WAIT_STEP = 30
"""Seconds each request for the outcome waits at the broker (asked again until the end)."""


def add_login_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login",
        help="log in once as a person; the running broker keeps the session fresh",
        description="Log in once as a person (a browser, or a refresh token on standard"
        " input); the running broker keeps the session fresh. The broker: --url, --config's"
        " address, $BROKER_URL; its key: $BROKER_KEY, $BROKER_KEY_FILE, --config --client.",
    )
    login.add_argument("provider", help="the provider to log in to")
    login.add_argument(
        "--no-browser",
        action="store_true",
        help="print the link for a browser elsewhere and read back the address it ended on",
    )
    login.add_argument(
        "--device",
        action="store_true",
        help="a device login (RFC 8628): enter the printed code at the identity provider's"
        " page, on any device",
    )
    login.add_argument(
        "--refresh-token",
        metavar="-",
        choices=["-"],
        help="read a refresh token from standard input instead of a browser login",
    )
    login.add_argument("--url", help="the broker's URL (default: --config's, $BROKER_URL)")
    login.add_argument("--config", "-c", help="the broker's config: its address and --client")
    login.add_argument("--client", help="the client in --config whose key to use")
    login.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the login (600)"
    )


def run_login(args: argparse.Namespace) -> int:
    settings = load_config(Path(args.config)) if args.config else None
    try:
        base = _broker_url(args.url, settings)
        key = _key(settings, args.client)
    except ValueError as exc:
        print(f"broker login: {exc}", file=sys.stderr)
        return EXIT_USAGE
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(
        base_url=base, headers=headers, trust_env=False, timeout=WAIT_STEP + 15
    ) as api:
        try:
            if args.refresh_token:
                return _seed(api, args.provider)
            if args.device:
                return _device_login(api, args.provider, deadline=time.monotonic() + args.timeout)
            return _browser_login(api, args, deadline=time.monotonic() + args.timeout)
        except httpx.HTTPError as exc:
            print(
                f"broker login: cannot reach the broker at {base}: {type(exc).__name__}",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE


def _seed(api: httpx.Client, provider: str) -> int:
    if sys.stdin.isatty():
        value = getpass.getpass(f"refresh token for {provider} (not shown): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        print("broker login: no refresh token on standard input", file=sys.stderr)
        return EXIT_USAGE
    answer = api.post(f"/login/{provider}/refresh-token", json={"refresh_token": value})
    return _report(answer)


def _device_login(api: httpx.Client, provider: str, *, deadline: float) -> int:
    answer = api.post(f"/login/{provider}/device")
    if answer.status_code != 201:
        return _report(answer)
    started = answer.json()
    print(f"To log in to {provider}, open {started['verification_uri']} on any device")
    print(f"and enter the code {started['user_code']}", flush=True)
    if started.get("verification_uri_complete"):
        print(f"(or open {started['verification_uri_complete']})", flush=True)
    return _wait(api, started["login"], deadline=deadline)


def _wait(api: httpx.Client, login_id: str, *, deadline: float) -> int:
    while True:
        left = deadline - time.monotonic()
        wait = max(0, min(WAIT_STEP, int(left)))
        answer = api.get(f"/login/attempts/{login_id}", params={"wait": wait})
        if answer.status_code != 200 or answer.json().get("outcome") != "pending":
            return _report(answer)
        if left <= 0:
            print("broker login: gave up waiting (--timeout)", file=sys.stderr)
            return EXIT_FAILED


def _browser_login(api: httpx.Client, args: argparse.Namespace, *, deadline: float) -> int:
    answer = api.post(f"/login/{args.provider}")
    if answer.status_code != 201:
        return _report(answer)
    started = answer.json()
    url, login_id = started["url"], started["login"]
    minutes = started["expires_in"] // 60
    print(f"Open this link to log in to {args.provider} (once, within {minutes} minutes):")
    print(f"  {url}", flush=True)
    if args.no_browser:
        print(
            "Then paste the address the browser ended on (it starts with"
            f" {started['redirect_uri']}):",
            flush=True,
        )
        pasted = sys.stdin.readline().strip()
        if not pasted:
            print("broker login: nothing pasted", file=sys.stderr)
            return EXIT_USAGE
        return _report(api.post(f"/login/attempts/{login_id}/redirect", json={"url": pasted}))
    if not webbrowser.open(url):
        print("(no browser could be opened here: open the link yourself)", flush=True)
    return _wait(api, login_id, deadline=deadline)


def _report(answer: httpx.Response) -> int:
    body: dict[str, Any] = {}
    try:
        data = answer.json()
        body = data if isinstance(data, dict) else {}
    except ValueError:
        pass
    if answer.status_code < 300 and body.get("outcome") == "ready":
        print(body.get("message") or "logged in")
        return 0
    message = body.get("message") or f"HTTP {answer.status_code}"
    code = body.get("error")
    print(f"broker login: {message}" + (f" [{code}]" if code else ""), file=sys.stderr)
    return EXIT_FAILED


def _broker_url(url: str | None, settings: BrokerSettings | None) -> str:
    if not url and settings is not None:
        return local_url(settings.host, settings.port)
    return broker_url(url)


def _key(settings: BrokerSettings | None, client: str | None) -> str | None:
    from_env = broker_key()
    if from_env is not None:
        return from_env
    if client is None:
        return None
    if settings is None:
        raise ValueError("--client needs --config")
    config = settings.clients.get(client)
    if config is None:
        raise ValueError(f"--config has no client named {client!r}")
    if config.key is None:
        raise ValueError(f"client {client!r} has no key (it is known by its Unix socket uid)")
    return config.key.get_secret_value()
