"""The server stack: uvicorn with the broker's app, fast path and connection guard.

Shared by ``broker serve``, ``broker demo`` and the serving benchmark's baseline, so that
all run the same loop, HTTP parser, guard, logging and shutdown.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from broker.config.settings import BrokerSettings
from broker.engine.store import TokenStore
from broker.ops import heap
from broker.server.connguard import ConnectionGate, connection_gate
from broker.web.app import create_app
from broker.web.metrics_port import LocalAddress, MetricsPort


def uvicorn_config(
    settings: BrokerSettings,
    config_path: Path | None = None,
    store: TokenStore | None = None,
    overrides: Mapping[str, Any] | None = None,
    gate: ConnectionGate | None = None,
    metrics_at: Sequence[LocalAddress] = (),
) -> uvicorn.Config:
    """The server for this process; also sets its garbage collector up (:mod:`broker.ops.heap`).

    *overrides* (``--host``, ``--port``) are applied again at every reload of *config_path*.
    *gate* times out and caps callers' connections (:mod:`broker.server.connguard`); by default
    one is made for *settings*, which raises this process's open-file limit. *metrics_at*:
    where the ``metrics_listen`` sockets among those the server is given listen
    (:mod:`broker.web.metrics_port` answers requests that arrive there).
    """
    gate = gate or connection_gate(settings)
    heap.tune()
    fast = create_app(
        settings, config_path=config_path, overrides=overrides, store=store, freeze_heap=True
    )
    app: ASGIApp = fast
    if metrics_at:
        runtime = fast.runtime
        app = MetricsPort(
            fast,
            listening=metrics_at,
            settings=settings,
            guard=runtime.guard,
            metrics=runtime.metrics,
        )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Levels are broker.ops.logs's (set_level, at start and at every reload): uvicorn's
        # own would turn its ASGI message trace on at trace.
        log_level=None,
        log_config=None,  # keep our logging setup
        access_log=False,  # per-request lines would flood the log; never with tokens anyway
        lifespan="on",
        timeout_graceful_shutdown=5,
        # Proxied requests are refused (broker.web.security), so never rewrite the peer
        # address from X-Forwarded-For, which uvicorn trusts from 127.0.0.1 by default.
        proxy_headers=False,
        http=gate.protocol(),  # uvicorn's own, behind a request-head deadline and the cap
        timeout_keep_alive=settings.limits.keepalive_timeout,
        ws="none",  # no websocket routes; an upgrade is answered as a plain request
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
