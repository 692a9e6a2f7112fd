"""The ``broker`` command's entry point: the probes and the shell helper
(:mod:`broker.light_cli`, standard library only) without importing the server, everything
else through :mod:`broker.cli`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

LIGHT_COMMANDS = ("health", "wait", "token")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in LIGHT_COMMANDS:
        from broker.light_cli import main as light

        return light(args)
    from broker.cli import main as full

    return full(args)
