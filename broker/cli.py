"""The ``broker`` command: serve, check a config, or run the self-contained demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from broker import __version__
from broker.config.load import inline_secret_warnings, load_config
from broker.config.settings import BrokerSettings
from broker.core.clock import SystemClock
from broker.core.errors import ConfigError
from broker.engine.state_file import StateError
from broker.engine.store import LocalStore, StoreError
from broker.hub_cli import add_hub_parser, run_hub
from broker.light_cli import COMMANDS as LIGHT_COMMANDS
from broker.light_cli import add_light_parsers, run_light
from broker.login_cli import add_login_parser, run_login
from broker.ops.logs import (
    JsonFormatter,
    capture_python_reports,
    configure_logging,
    holding_records,
)
from broker.probe import (
    Outcome,
    cleartext_warnings,
    describe_store,
    storage_problems,
    store_facts,
    try_logins,
)
from broker.protocols import build_protocol
from broker.server.address_file import AddressFileError, remove_address_file, write_address_file
from broker.server.connguard import connection_gate
from broker.server.listeners import ListenError, close_all, listen_address, open_listeners
from broker.server.uvicorn import exit_zero_after_shutdown, uvicorn_config
from broker.web.app import open_store, shared_store

CONFIG_ENV = "BROKER_CONFIG"
DEFAULT_CONFIG = os.environ.get(CONFIG_ENV) or "config.yaml"
"""``--config``'s default: ``$BROKER_CONFIG``, else ``config.yaml``."""
EXIT_LOGIN_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_PORT_IN_USE = 3
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl+C."""
EXIT_STDOUT_CLOSED = 1
"""As the Python docs' recipe for a reader that goes away (``broker check | head -1``)."""


SERVE_EPILOG = f"""
Any setting can also come from the environment: BROKER_<KEY>, nested keys joined by
two underscores (BROKER_PORT=9000, BROKER_PROVIDERS__HIRO__URL=https://...); the command
line wins over the environment, the environment over the file.

examples:
  broker serve                                   # ${CONFIG_ENV} or ./config.yaml
  broker serve -c /etc/broker/config.yaml --log-format json
  BROKER_PORT=9000 broker serve --log-level debug
  broker serve --log-level trace                 # also the HTTP client's connection steps

exit status: 0 after SIGTERM or SIGINT; 2 a configuration error (file, key, what is
wrong); 3 the port (or metrics_listen's) is in use.
"""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``broker`` command; returns its exit status."""
    try:
        try:
            return _run(argv)
        finally:
            # Output is buffered: a reader that went away shows here, not at exit.
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_STDOUT_CLOSED
    except KeyboardInterrupt:
        # Ctrl+C during check --login, say: the user knows, no traceback needed.
        print("broker: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _discard_stdout() -> None:
    """Send what is left for stdout nowhere, so the interpreter's final flush cannot fail
    again with a traceback (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _run(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG_ERROR
    try:
        if args.command == "check":
            return _check(args.config, login=args.login)
        if args.command == "serve":
            return _serve(args)
        if args.command == "login":
            return run_login(args)
        if args.command == "hub":
            return run_hub(args)
        if args.command in LIGHT_COMMANDS:
            return run_light(args)
        from broker.demo import run_demo  # the demo alone needs the fakes

        return run_demo(host=args.host, port=args.port, ttl=args.ttl)
    except ConfigError as exc:
        if _wants_json(args):
            _json_error("configuration error", exc, event="config_error")
        else:
            print(f"broker: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except ListenError as exc:
        if _wants_json(args):
            _json_error("cannot listen", exc, event="listen_error")
        else:
            print(f"broker: {exc}", file=sys.stderr)
        return EXIT_PORT_IN_USE if exc.in_use else EXIT_CONFIG_ERROR


def _wants_json(args: argparse.Namespace) -> bool:
    """Whether a failure before logging is set up should be a JSON line: ``--log-format
    json``, or ``BROKER_LOG_FORMAT=json`` (the config file may be what failed)."""
    chosen = getattr(args, "log_format", None) or os.environ.get("BROKER_LOG_FORMAT", "")
    return chosen.strip().lower() == "json"


def _start_error(args: argparse.Namespace, what: str, exc: Exception, *, event: str) -> None:
    """A problem that stops the start: ``broker: <what>`` and its lines, or one JSON record."""
    if _wants_json(args):
        _json_error(what, exc, event=event)
    else:
        print(f"broker: {what}\n{exc}", file=sys.stderr)


def _json_error(what: str, exc: Exception, *, event: str) -> None:
    """*exc* as one JSON log record on stderr, as the running broker writes them."""
    record = logging.LogRecord("broker", logging.ERROR, __file__, 0, "%s: %s", (what, exc), None)
    record.event = event
    print(JsonFormatter().format(record), file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Local credential broker: keeps OAuth2 tokens fresh and serves them on"
        " localhost at GET /token/<provider>.",
    )
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the broker",
        description="Run the broker: keep every configured provider's token fresh and serve"
        " it on localhost.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help=f"YAML config file (default: ${CONFIG_ENV}, else config.yaml; now {DEFAULT_CONFIG})",
    )
    serve.add_argument("--host", help="listen address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default from config: 8181)")
    serve.add_argument(
        "--log-level",
        choices=["trace", "debug", "info", "warning", "error"],
        help="overrides log_level (trace: also the HTTP client's connection internals)",
    )
    serve.add_argument("--log-format", choices=["text", "json"], help="overrides log_format")

    check = commands.add_parser(
        "check", help="validate a config and print what each provider will do"
    )
    check.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config file (${CONFIG_ENV})"
    )
    check.add_argument(
        "--login",
        action="store_true",
        help="also log in once per provider with its primary grant and report the outcome"
        " (nothing is saved; refresh tokens are never spent)",
    )

    add_login_parser(commands)
    add_hub_parser(commands)
    add_light_parsers(commands)  # run by broker.entry without this module; listed in --help

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


def _check(config_path: str, *, login: bool) -> int:
    settings = load_config(config_path)
    _log_warnings_plainly()
    problems = storage_problems(settings)
    if problems:
        lines = (f"{config_path}: {key}: {problem}" for key, problem in problems)
        raise ConfigError("\n".join(lines))
    for warning in inline_secret_warnings(config_path):
        print(f"warning: {warning}", file=sys.stderr)
    for warning in cleartext_warnings(settings):
        print(f"warning: {config_path}: {warning}", file=sys.stderr)
    try:
        facts = asyncio.run(store_facts(settings))
    except StoreError as exc:
        # One line: the message names the store, never its URL.
        print(f"broker: store error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    _describe(config_path, settings)
    if facts is not None:
        line, forgetful = describe_store(facts)
        print(line)
        if forgetful is not None:
            print(f"warning: {forgetful}", file=sys.stderr)
    return _check_logins(settings) if login else 0


def _log_warnings_plainly() -> None:
    """What serve's checks log (a state directory open to others) as ``warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _describe(config_path: str, settings: BrokerSettings) -> None:
    print(f"{config_path}: OK, {len(settings.providers)} provider(s)")
    if settings.listen_tcp:
        print(f"listen: http://{listen_address(settings.host)}:{settings.port}")
    if settings.listen_unix is not None:
        unix = settings.listen_unix
        group = "" if unix.group is None else f", group {unix.group}"
        print(f"listen: unix:{unix.path} (mode {unix.mode:04o}{group})")
    if settings.metrics_listen is not None:
        print(f"metrics: http://{settings.metrics_listen}/metrics (no client key)")
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


def _check_logins(settings: BrokerSettings) -> int:
    """``check --login``: 0 when every login that ran succeeded, 1 when any failed."""
    print("test login: one token request per provider, nothing saved", flush=True)
    counts = asyncio.run(_report_logins(settings))
    print(
        f"test login: {counts[Outcome.OK]} OK, {counts[Outcome.FAILED]} failed,"
        f" {counts[Outcome.SKIPPED]} skipped"
    )
    return EXIT_LOGIN_FAILED if counts[Outcome.FAILED] else 0


async def _report_logins(settings: BrokerSettings) -> Counter[Outcome]:
    counts: Counter[Outcome] = Counter()
    async with contextlib.aclosing(try_logins(settings)) as results:
        async for result in results:
            counts[result.outcome] += 1
            # Flushed line by line: slow identity providers should not hold back the others.
            print(f"- {result.provider}: {result.summary}", flush=True)
            if result.detail:
                print(f"    {result.detail}", flush=True)
    return counts


def _serve(args: argparse.Namespace) -> int:
    given = (
        ("host", args.host),
        ("port", args.port),
        ("log_level", args.log_level),
        ("log_format", args.log_format),
    )
    overrides = {k: v for k, v in given if v is not None}
    # What reading the file logs (a deprecated key) is written once logging is set up, in
    # its format: until then the format is only known from --log-format or the environment.
    with holding_records() as held:
        try:
            settings = load_config(Path(args.config), overrides=overrides)
        except ConfigError:
            configure_logging("warning", "json" if _wants_json(args) else "text")
            held.replay()
            raise
    configure_logging(settings.log_level, settings.log_format)
    capture_python_reports()
    held.replay()
    args.log_format = settings.log_format  # what a failure from here on is written as
    log = logging.getLogger("broker")
    for warning in inline_secret_warnings(args.config):
        log.warning("%s", warning)
    try:
        store = open_store(settings)
    except StateError as exc:
        _start_error(args, "state directory error", exc, event="state_dir_error")
        return EXIT_CONFIG_ERROR
    try:
        # Only built to check it (the app opens its own on its loop): nothing connects yet.
        shared = shared_store(settings, SystemClock()) is not None
    except StoreError as exc:
        _start_error(args, "store error", exc, event="store_error")
        return EXIT_CONFIG_ERROR
    if store is None and not shared:
        log.warning(
            "no state_dir configured: refresh tokens are kept in memory only, so a restart"
            " needs a new login (and a provider with only a refresh token is lost)"
        )
    for warning in cleartext_warnings(settings):
        log.warning("%s", warning)
    gate = connection_gate(settings)  # before any socket: raises the open-file limit
    listeners = open_listeners(settings)  # before announcing them
    if settings.address_file is not None:
        try:
            write_address_file(settings.address_file, listeners, settings.host)
        except AddressFileError as exc:
            listeners.close()
            _start_error(args, "address file error", exc, event="address_file_error")
            return EXIT_CONFIG_ERROR
    log.info(
        "serving %d provider(s) on %s",
        len(settings.providers),
        listeners.addresses(settings.host),
    )
    _announce_metrics(settings, listeners.metrics_url())
    log.info("%s", gate.describe())
    gated = gate.listeners(listeners.sockets)
    try:
        with exit_zero_after_shutdown():
            # With a shared store the app opens it on the server's loop (and closes it).
            local = None if shared else LocalStore(store)
            config = uvicorn_config(
                settings, Path(args.config), local, overrides, gate, listeners.metrics_at
            )
            server = uvicorn.Server(config)
            server.run(sockets=gated)
    finally:
        if settings.address_file is not None:
            remove_address_file(settings.address_file)
        close_all(gated)
        listeners.close()  # and the Unix socket's file
    return 0


def _announce_metrics(settings: BrokerSettings, url: str | None) -> None:
    metrics = settings.metrics_listen
    if metrics is None or url is None:
        return
    log = logging.getLogger("broker")
    log.info("metrics for Prometheus at %s (no client key; also /healthz)", url)
    if metrics.allow_unauthenticated_network:
        log.warning(
            "metrics_listen.allow_unauthenticated_network is set: anything that can reach %s"
            " can read the metrics without a key",
            metrics,
        )
