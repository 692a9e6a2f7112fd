"""``python -m broker.fakes {hiro,aerion,hub,oauth2} [--host H] [--port P] [--ttl S] [--quirks M]``.

Runs one fake identity provider with its demo defaults until interrupted and prints one line:
its base URL, the demo credentials (fixed, non-secret demo values) and the world mode
(:data:`broker.fakes.base.WORLD_MODES`, default ``kind``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence

from broker.fakes.demo import FAKE_KINDS, FakeKind, demo_credentials, make_demo_fake
from broker.fakes.quirks import WORLD_MODES
from broker.fakes.server import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker.fakes", description="Run a fake identity provider."
    )
    parser.add_argument("kind", choices=FAKE_KINDS, help="which provider to fake")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free)")
    parser.add_argument("--ttl", type=float, default=None, help="access-token lifetime, seconds")
    parser.add_argument(
        "--quirks",
        choices=WORLD_MODES,
        default="kind",
        help="wider-world behaviours to switch on (default kind: none; hostile: all)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    kind: FakeKind = args.kind
    quirks = WORLD_MODES[args.quirks]
    fake = make_demo_fake(kind, ttl=args.ttl, quirks=quirks)
    creds = " ".join(f"{k}={v}" for k, v in demo_credentials(kind, quirks=quirks).items())

    def announce(base_url: str) -> None:
        print(
            f"fake {kind} listening on {base_url} ttl={fake.ttl:g}s quirks={args.quirks} {creds}",
            flush=True,
        )

    # Ctrl+C ends the run; the server shuts down in serve()'s cleanup.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(fake.app, args.host, args.port, on_started=announce))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
