"""The audit trail: one structured line per token handed out (client, provider, time).

Every answered ``GET /token`` writes one, so this is the hottest log call in
the broker. Through ``logging`` a line costs ~13 µs (a ``LogRecord``, the
caller's frame lookup, the formatter, a write and a flush): a fifth of the
fast path's time under load (``bench/serving.py --profile``). So when the
handler :func:`broker.ops.logs.configure_logging` installed is the only place the
line goes, the line is rendered from a template that handler's own formatter
made once per (client, provider), and the lines of one event-loop iteration
are written to its stream in one write at the end of that iteration: the same
bytes as through ``logging`` (``tests/test_logs.py`` compares them), a few µs
less, one system call per iteration instead of one per token.

Any other logging setup (an embedding app's handlers, pytest's ``caplog``, a
filter on the logger) gets ordinary log records, one per token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, TextIO

from broker.ops.logs import LineFormatter, sole_handler, write_lines

MESSAGE: Final = "token served"
MAX_TEMPLATES: Final = 4096
"""Templates kept per handler; past that (pairs of client and provider) the cache starts over."""


class AuditTrail:
    """Writes the ``broker.ops.audit`` line for each token served; never the token."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger("broker.audit")
        self._clock = clock
        self._pending: list[tuple[float, str, str]] = []
        """(time, client, provider) of the lines not yet written."""
        self._handler: logging.Handler | None = None
        self._templates: dict[tuple[str, str], Callable[[float], str]] = {}

    def token_served(self, client: str, provider: str) -> None:
        if self._pending:  # a flush is scheduled: this iteration's lines go where it writes
            self._pending.append((self._clock(), client, provider))
            return
        handler = sole_handler(self.logger, logging.INFO)
        if handler is None or not isinstance(handler.formatter, LineFormatter):
            self._log(client, provider)
            return
        self._pending.append((self._clock(), client, provider))
        try:
            asyncio.get_running_loop().call_soon(self.flush, handler)
        except RuntimeError:  # not on an event loop: write at once
            self.flush(handler)

    def flush(self, handler: logging.StreamHandler[TextIO]) -> None:
        """Write the pending lines through *handler* (or through logging if that changed)."""
        entries, self._pending = self._pending, []
        if not entries:
            return
        formatter = handler.formatter
        if sole_handler(self.logger, logging.INFO) is handler and isinstance(
            formatter, LineFormatter
        ):
            try:
                write_lines(
                    handler, [self._render(formatter, handler, *entry) for entry in entries]
                )
            except Exception:  # noqa: S110  # a broken stream: logging reports it below
                pass
            else:
                return
        for _, client, provider in entries:
            self._log(client, provider)

    def _render(
        self,
        formatter: LineFormatter,
        handler: logging.Handler,
        created: float,
        client: str,
        provider: str,
    ) -> str:
        if handler is not self._handler or len(self._templates) >= MAX_TEMPLATES:
            self._handler = handler
            self._templates = {}
        render = self._templates.get((client, provider))
        if render is None:
            record = self.logger.makeRecord(
                self.logger.name,
                logging.INFO,
                "",
                0,
                MESSAGE,
                (),
                None,
                extra={"client": client, "provider": provider},
            )
            render = self._templates[client, provider] = formatter.renderer(record)
        return render(created)

    def _log(self, client: str, provider: str) -> None:
        self.logger.info(MESSAGE, extra={"client": client, "provider": provider})
