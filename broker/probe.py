"""What ``broker check`` verifies beyond the config's syntax.

Each check runs the code ``serve`` runs, so its answer cannot drift from what
``serve`` will do:

* :func:`storage_problems`: the state directory and every token sink's
  directory accept a file now (``StateStore``'s and ``FileSink``'s own start-up
  checks).
"""

from __future__ import annotations

from broker.app import open_store
from broker.config import BrokerSettings
from broker.sinks import FileSink, SinkError
from broker.state import StateError

# -- storage --------------------------------------------------------------------------


def storage_problems(settings: BrokerSettings) -> list[tuple[str, str]]:
    """``(config key, problem)`` for every directory ``serve`` could not write to.

    Runs serve's own checks: opening the state directory (which creates it when
    missing, as serve does, and proves it writable) and each sink's check.
    """
    problems: list[tuple[str, str]] = []
    if settings.state_dir is not None:
        try:
            open_store(settings)
        except StateError as exc:
            problems.append(("state_dir", str(exc)))
    for name, provider in settings.providers.items():
        if provider.sink is None:
            continue
        try:
            FileSink(provider.sink, name).check()
        except SinkError as exc:
            problems.append((f"providers.{name}.sink.path", str(exc)))
    return problems
