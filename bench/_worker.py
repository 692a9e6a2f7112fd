"""A fresh "worker" process for ``bench.vs_inprocess``: its first authorized API request.

    python -m bench._worker broker <broker url> <provider> <api url>
    python -m bench._worker authlib <token url> <client id> <secret> <api url>

Prints one JSON line of ``time.monotonic()`` stamps (system-wide, comparable with the
parent's): ``main`` (imports done), ``token`` (bearer token in hand), ``done`` (the API
answered 200 to the authorized request).
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def via_broker(broker: str, provider: str, api: str) -> dict[str, float]:
    main = time.monotonic()
    with httpx.Client(trust_env=False) as client:
        token = client.get(f"{broker}/token/{provider}").json()["access_token"]
        got = time.monotonic()
        client.get(api, headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    return {"main": main, "token": got, "done": time.monotonic()}


def via_authlib(token_url: str, client_id: str, secret: str, api: str) -> dict[str, float]:
    # Imported here, so its import time is counted. No stubs: see the type: ignore.
    from authlib.integrations.httpx_client import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        OAuth2Client,
    )

    imported = time.monotonic()
    with OAuth2Client(client_id, secret, token_endpoint=token_url, trust_env=False) as client:
        client.fetch_token(grant_type="client_credentials")
        got = time.monotonic()
        client.get(api).raise_for_status()
    return {"main": imported, "token": got, "done": time.monotonic()}


def main() -> int:
    mode, *rest = sys.argv[1:]
    stamps = via_broker(*rest) if mode == "broker" else via_authlib(*rest)
    print(json.dumps(stamps), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
