"""Garbage-collector settings for a long-running broker process.

CPython's cyclic collector stops the whole process while it scans. With
10,000 providers the broker holds about a million tracked objects (a metric
series per provider with a lock per histogram bucket, a refresh task per
provider, configs, protocols), and a full collection took 0.7 s: every
refresh due meanwhile started late (``bench/scale.py``: p99 lateness 0.58 s
before, 34 ms after). The usual remedies for long-lived servers, both here:

* :func:`freeze` after start-up: ``gc.freeze()`` moves every object then
  alive into a permanent generation that collections skip. The objects are
  still freed by reference counting; only cycles among them wait for the
  next :func:`thawed` (a config reload).
* :data:`THRESHOLDS`: collect the youngest generation every 10,000 net
  allocations instead of 700, and the older ones less often, so objects that
  live for one token request are not promoted to the old generation (whose
  growth is what triggers full collections). Fewer young collections also
  stall ``GET /token`` less while providers refresh (``bench/refresh_noise.py``
  with 100 providers: p99 1.93-2.01 times the idle p99 with the defaults, ~1.6 with
  these; 50,000 for the first did no better).

Only the server process (``broker serve``, ``broker demo``) does this; an app
embedding :func:`broker.app.create_app` keeps its own settings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

THRESHOLDS: Final = (10_000, 50, 100)
"""``gc.set_threshold`` values (CPython's defaults are 700, 10, 10)."""


def tune() -> None:
    """Set the collector's thresholds for a server process."""
    gc.set_threshold(*THRESHOLDS)


def freeze() -> None:
    """Exempt everything alive now from collections (after start-up).

    Collects first: start-up garbage in reference cycles (the YAML loader's
    node graph, for one) would otherwise be frozen with the rest and never freed.
    """
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def thawed() -> Iterator[None]:
    """Unfreeze for a change of what lives (a reload), collect what it left, freeze again."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
