"""Logging setup: one line per event, as text for people or JSON for log pipelines.

:func:`configure_logging` installs one handler on the root logger and routes
uvicorn's loggers through it, so every line of the process has the same
shape::

    2026-11-25T03:14:07Z INFO broker.manager hiro: new token (scheduled) valid for 3600 s
    {"ts": "2026-11-25T03:14:07.123Z", "level": "INFO", "logger": "broker.manager",
     "msg": "hiro: new token ...", "provider": "hiro", "duration_ms": 12}

(the JSON object is on one line). Fields passed with ``extra={...}`` appear as
top-level JSON keys, and as ``key=value`` after the message in text. Text
lines escape line breaks (a traceback becomes one line with ``\\n``), so one
event is always one line and a message cannot forge another line.

:class:`SecretFilter` is a last line of defence: the broker never logs a
secret on purpose, but if a configured secret or a token the broker holds ever
reaches another library's log record, in any spelling or as a piece of 8 or
more characters (:mod:`broker.core.redact`), it is replaced by ``[redacted]``
before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

from broker.core.redact import REDACTED as REDACTED  # re-exported: what a redacted value looks like
from broker.core.redact import Redactor

LogFormat = Literal["text", "json"]

UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
"""Routed through the root handler: their own handlers are removed and they propagate."""

_RESERVED: Final = frozenset(
    # Attributes every LogRecord has; anything else on a record came from extra=.
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName", "color_message"}
)
"""``color_message`` is uvicorn's ANSI-coloured duplicate of the message: dropped."""

_JSON_KEYS: Final = frozenset({"ts", "level", "logger", "msg", "exc_type", "exc", "stack"})

_MARK: Final = "_broker_handler"
"""Attribute set on the handler we install, so a second call replaces it."""


def configure_logging(
    level: str,
    fmt: LogFormat = "text",
    stream: TextIO | None = None,
    *,
    secrets: Callable[[], Iterable[str]] | None = None,
) -> logging.Handler:
    """Send every log record to *stream* (default: stderr) as *fmt* lines at *level*.

    Replaces the handler a previous call installed (idempotent), removes
    uvicorn's own handlers and makes its loggers propagate here. With *secrets*,
    a :class:`SecretFilter` on the handler redacts those values from every
    record. Returns the handler (tests; adding filters later).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if secrets is not None:
        handler.addFilter(SecretFilter(secrets))
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    for name in HTTPCORE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HeaderValueFilter) for f in logger.filters):
            logger.addFilter(HeaderValueFilter())
    set_level(level)
    return handler


TRACE: Final = 5
"""``log_level: trace``: below DEBUG, uvicorn's number and name for it (``uvicorn.logging``)."""
logging.addLevelName(TRACE, "TRACE")

LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
"""``log_level``'s names and the numbers :mod:`logging` knows them by."""

CLIENT_LOGGERS: Final = ("httpx", "httpcore")
"""The HTTP client's loggers, whose levels :func:`set_level` sets."""

HTTPCORE_LOGGERS: Final = (
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
"""Where httpcore makes its records (a filter on a logger sees only its own records)."""


def level_number(level: str) -> int:
    """The :mod:`logging` number of a ``log_level`` name (any case)."""
    return LEVELS[level.lower()]


def set_level(level: str) -> None:
    """Log at *level* from now on (at start, and when a reload changes ``log_level``).

    * The HTTP client: httpx logs one line per request at INFO, which the broker's own
      line per token request (provider, outcome, duration) says better, so it speaks up
      only for problems, or from ``debug`` on. httpcore's connection and TLS internals
      (a record per step of every request, the answer's headers included) only at
      ``trace``.
    * uvicorn follows *level* (it sets its loggers' levels itself, once at start:
      a reload must set them again). At ``trace`` that is a line per caller connection
      made and lost; its ASGI message trace (``uvicorn.asgi``: every request's path and
      query string, where a login's one-time id and authorization code travel) stays off
      at every level.
    """
    number = level_number(level)
    logging.getLogger().setLevel(number)
    httpx_level = logging.NOTSET if number <= logging.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(httpx_level)
    logging.getLogger("httpcore").setLevel(logging.NOTSET if number <= TRACE else logging.WARNING)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(number)
    logging.getLogger("uvicorn.asgi").setLevel(max(number, logging.DEBUG))


class HeldRecords(logging.Handler):
    """Records made before logging is set up (the config file's own warnings, while it is
    read), kept to be written in the configured format once it is (:meth:`replay`),
    rather than as bare text by logging's last resort."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self) -> None:
        """Hand every held record to its logger again, as far as its level now lets it."""
        records, self.records = self.records, []
        for record in records:
            logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)


@contextlib.contextmanager
def holding_records() -> Iterator[HeldRecords]:
    """While inside, records that reach the root logger are held (see :class:`HeldRecords`)."""
    held = HeldRecords()
    root = logging.getLogger()
    root.addHandler(held)
    try:
        yield held
    finally:
        root.removeHandler(held)


UNCAUGHT_LOGGER: Final = "py.uncaught"
"""Where an exception nothing caught is written (next to logging's ``py.warnings``); not a
``broker.`` logger, so the SecretFilter reads it."""


def capture_python_reports() -> None:
    """Python's own reports on stderr as log records, one line each like every other:
    warnings (``py.warnings``), and an exception that ends the process or a thread
    (:data:`UNCAUGHT_LOGGER`, CRITICAL, its traceback in the record) instead of a
    multi-line traceback. The exit status stays what Python makes it."""
    logging.captureWarnings(True)
    crash = logging.getLogger(UNCAUGHT_LOGGER)

    def process_hook(
        kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
    ) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, value, tb)
            return
        crash.critical("uncaught exception, the process ends", exc_info=(kind, value, tb))

    def thread_hook(info: threading.ExceptHookArgs) -> None:
        if info.exc_value is None or issubclass(info.exc_type, SystemExit):
            return
        name = info.thread.name if info.thread is not None else "?"
        crash.critical(
            "uncaught exception in thread %s",
            name,
            exc_info=(info.exc_type, info.exc_value, info.exc_traceback),
        )

    sys.excepthook = process_hook
    threading.excepthook = thread_hook


def add_secret_filter(secrets: Callable[[], Iterable[str]]) -> Callable[[], None]:
    """Add a :class:`SecretFilter` to the handler :func:`configure_logging` installed.

    For secrets known only later (the manager's rotated refresh tokens and
    current access tokens). Returns a function that removes the filter again.
    Without a configured handler (tests using pytest's capture) it does nothing.
    """
    secret_filter = SecretFilter(secrets)
    handlers = [h for h in logging.getLogger().handlers if getattr(h, _MARK, False)]
    for handler in handlers:
        handler.addFilter(secret_filter)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(secret_filter)

    return remove


def sole_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[TextIO] | None:
    """The handler :func:`configure_logging` installed, if a *level* record from *logger*
    would be written by it and by nothing else, unchanged by any filter; else None.

    Then a line rendered by its formatter may be written to its stream directly
    (:mod:`broker.ops.audit` does that for its one line per token served).
    """
    if not logger.isEnabledFor(level):
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or not getattr(handler, _MARK, False):
                return None
            found = handler
        current = current.parent if current.propagate else None
    if not isinstance(found, logging.StreamHandler) or level < found.level:
        return None
    own = logger.name.startswith(OWN_LOGGERS)  # SecretFilter passes these unchanged
    if any(not (own and isinstance(f, SecretFilter)) for f in found.filters):
        return None
    return found


def write_lines(handler: logging.StreamHandler[TextIO], lines: list[str]) -> None:
    """Write preformatted lines in one write, as ``handler.emit`` would write each.

    Errors are the caller's to handle.
    """
    terminator = handler.terminator
    with handler.lock or contextlib.nullcontext():
        handler.stream.write(terminator.join(lines) + terminator)
        handler.flush()


def _timestamp(created: float, *, millis: bool) -> str:
    """RFC 3339 UTC, to the second or millisecond, as ``datetime.isoformat`` writes it.

    Every log line needs one, and the audit trail writes one per token served,
    so the date and time part is rendered once per second.
    """
    frac, whole = math.modf(created)
    # datetime.fromtimestamp rounds to the microsecond, half to even, carrying into
    # the second; isoformat then truncates to milliseconds.
    micros = round(frac * 1e6)
    second = int(whole)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:  # before 1970: modf keeps the sign
        second, micros = second - 1, micros + 1_000_000
    text = _second_text(second)
    return f"{text}.{micros // 1000:03d}Z" if millis else f"{text}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC (``datetime`` takes ~1.5 µs: once per second)."""
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with ``extra=``, in the order given."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
    }


def _exception_text(record: logging.LogRecord, formatter: logging.Formatter) -> str | None:
    """The traceback text, cached on the record like ``logging.Formatter`` does."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    return record.exc_text or None


LINE_BREAKS: Final = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character ``str.splitlines`` breaks a line at (a terminal, or a reader that splits
on more than ``\\n``, would too): none is written raw, so one record is one line."""

_TEXT_ESCAPES: Final = str.maketrans(
    {"\\": "\\\\", "\r": "\\r", "\n": "\\n"}
    | {c: f"\\u{ord(c):04x}" for c in LINE_BREAKS if c not in "\r\n"}
)
_JSON_ESCAPES: Final = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})
"""What ``json.dumps(ensure_ascii=False)`` leaves raw of LINE_BREAKS (it escapes the rest)."""


def _escape(text: str) -> str:
    return text.translate(_TEXT_ESCAPES)


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c in text for c in ' ="\\\t' + LINE_BREAKS):
        return json.dumps(text)
    return text


def message_of(record: logging.LogRecord) -> str:
    """The record's message with its arguments; when they do not fit (another library's
    mistake), the message and the arguments as they are, instead of logging's multi-line
    "--- Logging error ---" report on stderr."""
    try:
        return record.getMessage()
    except Exception as exc:
        return f"{record.msg} (arguments that do not fit it: {record.args!r}: {exc})"


class LineFormatter(logging.Formatter):
    """A formatter that can also render a repeated record's line for another time."""

    def renderer(self, record: logging.LogRecord) -> Callable[[float], str]:
        """``render(created)``: *record*'s line as if it had been made at *created*."""
        raise NotImplementedError


class TextFormatter(LineFormatter):
    """``<RFC 3339 UTC> LEVEL logger message [key=value ...]``, always one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created, millis=False),
            record.levelname,
            record.name,
            _escape(message_of(record)),
        ]
        parts.extend(f"{key}={_text_value(value)}" for key, value in extra_fields(record).items())
        exc = _exception_text(record, self)
        if exc:
            parts.append(_escape(exc))
        if record.stack_info:
            parts.append(_escape(self.formatStack(record.stack_info)))
        return " ".join(parts)

    def renderer(self, record: logging.LogRecord) -> Callable[[float], str]:
        rest = self.format(record).partition(" ")[2]
        return lambda created: f"{_timestamp(created, millis=False)} {rest}"


class JsonFormatter(LineFormatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extra fields, ``exc``.

    An extra field whose name clashes with one of those keys is renamed
    ``extra_<name>``; values JSON cannot encode are written as ``str(value)``.
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _timestamp(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": message_of(record),
        }
        for key, value in extra_fields(record).items():
            document[f"extra_{key}" if key in _JSON_KEYS else key] = value
        exc = _exception_text(record, self)
        if exc:
            if record.exc_info and record.exc_info[0] is not None:
                document["exc_type"] = record.exc_info[0].__name__
            document["exc"] = exc
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        line = json.dumps(document, default=str, ensure_ascii=False)
        return line if line.isascii() else line.translate(_JSON_ESCAPES)

    def renderer(self, record: logging.LogRecord) -> Callable[[float], str]:
        rest = self.format(record).partition(", ")[2]  # all but the leading "ts" member
        return lambda created: f'{{"ts": "{_timestamp(created, millis=True)}", {rest}'


OWN_LOGGERS = ("broker.", "broker")
"""The broker's own log calls never format a secret or token (tests check every flow at
DEBUG). The filter scans only other libraries' records: scanning every record against
every secret and token held would cost O(providers) per line, which at 10,000 providers
made each refresh ~20 ms of CPU."""


class SecretFilter(logging.Filter):
    """Redact every secret *secrets* returns from a record, in any spelling.

    *secrets* is called for each record (so reloaded secrets and rotated tokens
    apply at once); the :class:`~broker.core.redact.Redactor` is updated with what
    changed since the last record, and ignores values under 8 characters, as
    redacting them would mangle ordinary words and numbers. The message is
    rendered with its args and redacted; string extra fields (also inside lists
    and dicts) and the exception text are redacted too. Put it on a handler, not
    a logger: logger filters do not see records propagated from child loggers.
    """

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets
        self._redactor = Redactor()
        self._held: list[str] = []
        """The values the redactor was last updated with."""
        # Records come from every thread; an update half done could miss a secret.
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OWN_LOGGERS):
            return True
        try:
            values = list(self._secrets())
        except Exception:  # a broken source must not lose the log line
            return True
        with self._lock:
            # The same strings as last time in the same order (no rotation since): one
            # comparison by identity per value, not a set built and compared.
            if values != self._held:
                self._redactor.update(values)
                self._held = values
            if self._redactor:
                self._redact(record, self._redactor.redact)
        return True

    @staticmethod
    def _redact(record: logging.LogRecord, scrub: Callable[[str], str]) -> None:
        record.msg = scrub(message_of(record))  # arguments that do not fit: redacted too
        record.args = None
        for key, value in extra_fields(record).items():
            setattr(record, key, _scrub_value(value, scrub))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)


_BYTES_REPR = r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\""
"""A ``bytes`` literal as ``repr`` writes it, in either quotes."""

_SENSITIVE_HEADER: Final = re.compile(
    rf"\((b['\"][^'\"]*?(?:authorization|cookie|token|secret|session|password|api-?key)"
    rf"[^'\"]*['\"]), (?:{_BYTES_REPR})\)",
    re.IGNORECASE,
)
"""A (name, value) pair of a header whose value may be a credential, in httpcore's record
of an answer's headers: ``(b'set-cookie', b'sid=...')``."""


class HeaderValueFilter(logging.Filter):
    """On httpcore's loggers (``trace`` turns them on): the value of every header whose name
    says it may hold a credential (``Set-Cookie``, ``Authorization``, ``X-Session-Token``
    ...) is replaced by ``[redacted]`` in its record of an answer's headers
    (``receive_response_headers.complete return_value=(..., [(b'name', b'value'), ...])``).

    httpcore never writes a request's header values or either body; the answer's headers
    it writes whole, and an identity provider's session cookie is no configured secret or
    held token that :class:`SecretFilter` would know. The name stays, for debugging.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, str) and "headers" in message and not record.args:
            record.msg = _SENSITIVE_HEADER.sub(rf"(\1, b'{REDACTED}')", message)
        return True


def _scrub_value(value: Any, scrub: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, scrub) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub(str(value))
