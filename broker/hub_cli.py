"""``broker hub register``: register the broker as a JetBrains Hub service, once.

Sends Hub's own request (``POST <hub>/api/rest/services?fields=id,secret`` with the
service's name, home URL, redirect URIs and whether it is trusted; an admin's token as
``Authorization: Bearer``, read from a file), and writes the returned id and secret to two
files with mode 0600. It prints a config snippet that references those files, never the
secret itself (``--show-secret`` prints it, for whoever asks).

Exit status: 0 registered, 1 Hub refused, 2 a usage error, 4 Hub could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from broker.config.providers import cleartext_host
from broker.core.addresses import origin_of

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 4


def add_hub_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hub = commands.add_parser("hub", help="JetBrains Hub: register the broker as a service")
    actions = hub.add_subparsers(dest="hub_command", metavar="ACTION", required=True)
    register = actions.add_parser(
        "register",
        help="register a Hub service for the broker; write its id and secret to 0600 files",
    )
    register.add_argument("--url", required=True, help="the Hub URL (https://hub.example.com)")
    register.add_argument("--name", required=True, help="the service's name in Hub")
    register.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        help="a redirect URI for browser logins (the broker's /login/callback); repeatable",
    )
    register.add_argument(
        "--home-url", help="the service's home URL (default: the first redirect URI's origin)"
    )
    register.add_argument(
        "--trusted",
        action="store_true",
        help="a trusted service: it may act on its own, and users see no extra warning",
    )
    register.add_argument(
        "--admin-token-file", required=True, type=Path, help="a file holding a Hub admin's token"
    )
    register.add_argument(
        "--id-file", type=Path, default=Path("hub-service-id"), help="where to write the id"
    )
    register.add_argument(
        "--secret-file",
        type=Path,
        default=Path("hub-service-secret"),
        help="where to write the secret (mode 0600)",
    )
    register.add_argument(
        "--show-secret", action="store_true", help="also print the secret (it is in the file)"
    )
    register.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Hub")


def run_hub(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if not url.startswith(("https://", "http://")):
        print("broker hub register: --url must be an http:// or https:// URL", file=sys.stderr)
        return EXIT_USAGE
    host = cleartext_host(url)
    if host is not None:
        msg = f"broker hub register: plain http:// to {host} would send the admin token unencrypted"
        print(msg, file=sys.stderr)
        return EXIT_USAGE
    try:
        admin = args.admin_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        print(f"broker hub register: {args.admin_token_file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    for path in (args.id_file, args.secret_file):
        if path.exists():
            print(f"broker hub register: {path} exists; not overwriting it", file=sys.stderr)
            return EXIT_USAGE
    body: dict[str, object] = {"name": args.name, "trusted": args.trusted}
    if args.redirect_uri:
        body["redirectUris"] = list(args.redirect_uri)
    home = args.home_url or (origin_of(args.redirect_uri[0]) if args.redirect_uri else None)
    if home:
        body["homeUrl"] = home
    try:
        answer = httpx.post(
            f"{url}/api/rest/services",
            params={"fields": "id,secret"},
            json=body,
            headers={"Authorization": f"Bearer {admin}", "Accept": "application/json"},
            timeout=args.timeout,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        why = type(exc).__name__
        print(f"broker hub register: cannot reach Hub at {url}: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    service = _service(answer)
    if service is None:
        # Hub's own message, without anything we sent (the admin token).
        text = answer.text[:300].replace(admin, "***") if admin else answer.text[:300]
        shown = " ".join(text.split())
        print(
            f"broker hub register: Hub answered HTTP {answer.status_code}: {shown}", file=sys.stderr
        )
        return EXIT_FAILED
    service_id, secret = service
    _write(args.id_file, service_id)
    _write(args.secret_file, secret)
    print(f"registered Hub service {args.name!r}: id {service_id}")
    print(f"wrote {args.id_file} and {args.secret_file} (mode 0600); in the broker's config:")
    print(
        "providers:\n  hub:\n    type: hub\n"
        f"    url: {json.dumps(url)}\n"
        "    grant: authorization_code\n"
        f"    client_id: {{file: {json.dumps(str(args.id_file.resolve()))}}}\n"
        f"    client_secret: {{file: {json.dumps(str(args.secret_file.resolve()))}}}"
    )
    if args.show_secret:
        print(f"secret: {secret}")
    return 0


def _service(answer: httpx.Response) -> tuple[str, str] | None:
    if answer.status_code != 200:
        return None
    try:
        data = answer.json()
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    service_id, secret = data.get("id"), data.get("secret")
    if isinstance(service_id, str) and service_id and isinstance(secret, str) and secret:
        return service_id, secret
    return None


def _write(path: Path, value: str) -> None:
    """*value* into a new file that only its owner may read, created so from the start."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(value + "\n")
