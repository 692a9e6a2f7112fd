"""Redaction: build and update cost of the Redactor, and what it adds per log line.

    .venv/bin/python -m bench.redact [--secrets 10000] [--json]

In-process, no servers. Secrets are random URL-safe strings: ``--secrets`` client secrets
of 32 characters, and a broker of as many providers holding what ``TokenManager.
secret_values`` lists for each: client secret (32), password (20), the two Basic
credentials (base64 of ``id:secret``), refresh token (43) and an access token (a
700-character JWT, as HIRO's). Reported: build time and index size, the cost of one token
rotation (the log filter's update: a set difference over every value, then one token
out and one in), the time per line of ``Redactor.redact`` (warm: the line's base64-looking
runs were seen before, as a library's identifiers are; and cold), and of a whole
``SecretFilter.filter`` call (the secrets callable, the update check, message and extra
fields) for lines without and with a secret. Best of ``--repeat`` runs of each timing.
"""

from __future__ import annotations

import argparse
import base64
import functools
import logging
import secrets
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench._common import emit, machine, table
from broker.core.redact import Redactor
from broker.ops.logs import SecretFilter
from broker.protocols.base import basic_credentials

LINES = {
    "uvicorn, 60 chars": "Uvicorn running on http://127.0.0.1:8181 (Press CTRL+C to quit)",
    "httpcore debug, 200 chars": (
        "receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'OK', "
        "[(b'content-type', b'application/json'), (b'content-length', b'1128'), "
        "(b'cache-control', b'no-store'), (b'x-request-id', b'3f9a7c')])"
    ),
}


class OldSecretFilter(logging.Filter):
    """The filter before the Redactor (commit 1673efb): each raw value, ``str.replace``."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        values = sorted({s for s in self._secrets() if len(s) >= 4}, key=len, reverse=True)
        message = record.getMessage()
        for value in values:
            if value in message:
                message = message.replace(value, "[redacted]")
        record.msg, record.args = message, None
        return True


def jwt() -> str:
    def part(size: int) -> str:
        return base64.urlsafe_b64encode(secrets.token_bytes(size)).decode().rstrip("=")

    return f"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{part(470)}.{part(32)}"


def provider_values(index: int) -> list[str]:
    """What ``TokenManager.secret_values`` holds for one provider with its own credentials."""
    client_secret = secrets.token_urlsafe(24)
    return [
        client_secret,
        secrets.token_urlsafe(15),
        *basic_credentials(f"client-{index}", client_secret),
        secrets.token_urlsafe(32),
        jwt(),
    ]


def best(run: Callable[[], object], repeat: int, number: int) -> float:
    """Seconds per call, best of *repeat* rounds of *number* calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            run()
        times.append((time.perf_counter() - started) / number)
    return min(times)


def build_cost(values: list[str]) -> dict[str, float]:
    """Seconds to build a Redactor of *values* (untraced), and the MB its index takes."""
    started = time.perf_counter()
    Redactor(values)
    seconds = time.perf_counter() - started
    tracemalloc.start()
    redactor = Redactor(values)
    megabytes = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del redactor
    return {"values": len(values), "build_s": seconds, "index_mb": megabytes}


def filter_cost(make: Callable[[], logging.Filter], text: str, repeat: int) -> float:
    """Seconds per record through a filter made by *make*, after a first record."""
    secret_filter = make()
    lib = logging.getLogger("somelib")

    def one() -> None:
        record = lib.makeRecord("somelib", logging.INFO, __file__, 1, "%s", (text,), None)
        secret_filter.filter(record)

    one()  # the new filter builds its redactor on the first record
    return best(one, repeat, 50)


def measure(count: int, repeat: int) -> dict[str, Any]:
    sets = {
        f"{count:,} client secrets (32 chars)": [secrets.token_urlsafe(24) for _ in range(count)],
        f"{count:,} providers' tokens (2 x 43 chars)": [
            secrets.token_urlsafe(32) for _ in range(2 * count)
        ],
        f"{count:,} providers, own credentials + JWT": [
            value for index in range(count) for value in provider_values(index)
        ],
        "one provider, own credentials + JWT": provider_values(0),
    }
    builds = {name: build_cost(values) for name, values in sets.items()}

    large = sets[f"{count:,} providers, own credentials + JWT"]
    redactor = Redactor(large)
    rotated = list(large)
    flip = [rotated, large]

    def rotate() -> None:  # one provider's refresh and access tokens replaced
        rotated[4], rotated[5] = secrets.token_urlsafe(32), jwt()
        redactor.update(flip[0])
        flip.reverse()

    rotation = best(rotate, repeat, 10)

    lines = dict(LINES)
    plain = LINES["httpcore debug, 200 chars"]
    lines["httpcore debug, a refresh token in it"] = plain.replace("3f9a7c", large[4])
    lines["httpcore debug, Basic credentials in it"] = plain.replace("3f9a7c", "Basic " + large[2])
    small = Redactor(sets["one provider, own credentials + JWT"])
    per_line = []
    for name, text in lines.items():

        def cold(text: str = text) -> None:
            redactor._verdicts.clear()  # as for a line whose encoded runs are all new
            redactor.redact(text)

        per_line.append(
            {
                "line": name,
                "redact, 1 provider": best(functools.partial(small.redact, text), repeat, 500),
                f"redact, {count:,} providers": best(
                    functools.partial(redactor.redact, text), repeat, 500
                ),
                "same, runs not seen before": best(cold, repeat, 200),
            }
        )
    per_record = []
    for held in (sets["one provider, own credentials + JWT"], large):
        # A new list of the same strings per call, as TokenManager.secret_values returns.
        source: Callable[[], list[str]] = functools.partial(list, held)
        for name in ("uvicorn, 60 chars", "httpcore debug, 200 chars"):
            new = filter_cost(functools.partial(SecretFilter, source), lines[name], repeat)
            old = filter_cost(functools.partial(OldSecretFilter, source), lines[name], repeat)
            per_record.append(
                {
                    "values held": len(held),
                    "line": name,
                    "SecretFilter": new,
                    "before (str.replace)": old,
                }
            )
    return {
        "secrets": count,
        "builds": builds,
        "rotation_update_s": rotation,
        "per_line_s": per_line,
        "per_record_s": per_record,
    }


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def report(result: dict[str, Any]) -> str:
    builds = [
        {
            "redactor of": name,
            "values": f"{cost['values']:,}",
            "build": f"{cost['build_s'] * 1000:,.1f} ms",
            "index (tracemalloc)": f"{cost['index_mb']:.1f} MB",
        }
        for name, cost in result["builds"].items()
    ]
    lines = [
        {k: v if k == "line" else _us(v) for k, v in row.items()} for row in result["per_line_s"]
    ]
    records = [
        {
            k: _us(v) if isinstance(v, float) else f"{v:,}" if k == "values held" else v
            for k, v in row.items()
        }
        for row in result["per_record_s"]
    ]
    rotation = result["rotation_update_s"] * 1000
    return "\n\n".join(
        [
            table(builds),
            f"one token rotation among {result['secrets']:,} providers, as the log filter"
            f" updates its redactor: {rotation:.2f} ms",
            table(lines),
            "a whole SecretFilter.filter call on another library's record (the secrets"
            " callable, the change check, the message), vs the filter before the Redactor:",
            table(records),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"machine": machine(), **measure(args.secrets, args.repeat)}
    emit("redact", result, report(result), as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
