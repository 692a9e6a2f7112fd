"""The ``broker`` command: serve, check a config, or run the self-contained demo."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from broker import __version__, heap
from broker.app import create_app, open_store
from broker.config import BrokerSettings, inline_secret_warnings, load_config
from broker.errors import ConfigError
from broker.fastpath import TokenFastPath
from broker.logs import configure_logging
from broker.protocols import build_protocol
from broker.state import StateError, StateStore

DEFAULT_CONFIG = "config.yaml"
EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG_ERROR
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "serve":
            return _serve(args)
        from broker.demo import run_demo  # the demo alone needs the fakes

        return run_demo(host=args.host, port=args.port, ttl=args.ttl)
    except ConfigError as exc:
        print(f"broker: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Local credential broker: keeps OAuth2 tokens fresh and serves them on"
        " localhost at GET /token/<provider>.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the broker")
    serve.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="YAML config file")
    serve.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config: 8181)")

    check = commands.add_parser(
        "check", help="validate a config and print what each provider will do"
    )
    check.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="YAML config file")

    demo = commands.add_parser(
        "demo",
        help="run the broker with local fake HIRO, Aerion and Hub identity providers",
    )
    demo.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8181, help="listen port (default 8181)")
    demo.add_argument(
        "--ttl", type=float, default=60.0, help="token lifetime the fakes issue, seconds"
    )
    return parser


def _check(config_path: str) -> int:
    settings = load_config(config_path)
    for warning in inline_secret_warnings(config_path):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config_path}: OK, {len(settings.providers)} provider(s)")
    print(f"listen: http://{settings.host}:{settings.port}")
    for name, provider in settings.providers.items():
        protocol = build_protocol(provider)
        policy = settings.refresh_for(name)
        seeded = " (starts from a configured refresh token)" if provider.refresh_token else ""
        print(f"- {name}: {protocol.describe()}{seeded}")
        print(
            f"    refresh at {policy.ratio:.0%} of each token's lifetime"
            f" (±{policy.jitter:.0%}), at least {policy.margin:g} s before expiry;"
            f" retries back off {policy.backoff_initial:g} s to {policy.backoff_max:g} s"
        )
    return 0


def uvicorn_config(
    settings: BrokerSettings, config_path: Path | None = None, store: StateStore | None = None
) -> uvicorn.Config:
    """The server for this process; also sets its garbage collector up (:mod:`broker.heap`)."""
    heap.tune()
    app = create_app(settings, config_path=config_path, store=store, freeze_heap=True)
    return uvicorn.Config(
        TokenFastPath(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep our logging setup
        access_log=False,  # per-request lines would flood the log; never with tokens anyway
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Proxied requests are refused (broker.security), so never rewrite the peer
        # address from X-Forwarded-For, which uvicorn trusts from 127.0.0.1 by default.
        proxy_headers=False,
    )


@contextlib.contextmanager
def exit_zero_after_shutdown() -> Iterator[None]:
    """Make SIGTERM and SIGINT end the process with status 0.

    uvicorn catches both, finishes in-flight requests and runs the app's
    shutdown, then raises the signal again against the handlers it found. With
    the default handlers that kills the process (status -15) or raises
    KeyboardInterrupt; a planned stop is not an error, so these handlers exit 0.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_config(Path(args.config), overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)
    log = logging.getLogger("broker")
    for warning in inline_secret_warnings(args.config):
        log.warning("%s", warning)
    try:
        store = open_store(settings)
    except StateError as exc:
        print(f"broker: state directory error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if store is None:
        log.warning(
            "no state_dir configured: refresh tokens are kept in memory only, so a restart"
            " needs a new login (and a provider with only a refresh token is lost)"
        )
    log.info(
        "serving %d provider(s) on http://%s:%d",
        len(settings.providers),
        settings.host,
        settings.port,
    )
    with exit_zero_after_shutdown():
        uvicorn.Server(uvicorn_config(settings, Path(args.config), store)).run()
    return 0
