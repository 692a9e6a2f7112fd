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
  allocations instead of 700, so objects that live for one token request are
  not promoted to the old generation (whose growth is what triggers full
  collections). Fewer young collections also stall ``GET /token`` less while
  providers refresh (``bench/refresh_noise.py`` with 100 providers: p99
  1.93-2.01 times the idle p99 with the defaults, ~1.6 with these; 50,000 for
  the first did no better). The older generations keep CPython's ratio of 10:
  a full collection every 100 young ones, so about every million allocations.

Token requests used to leave garbage in reference cycles that only the
collector frees: httpx links a response and the stream that reads it both
ways, about 40 objects per request, and a young collection after a refresh
burst freed ~10,000 of them in one 4-9 ms pause (``bench/refresh_noise.py``).
:func:`broker.engine.exchange.release_stream` now breaks that link, so they
are freed by reference counting; other cycles remain possible. Cycles
still alive at a young collection (a request in flight) move to older
generations, and the oldest is collected only in full collections. With the
old generations collected every 50 and 100 times less often (the thresholds
were 10,000, 50, 100), a full collection came every 50 million allocations,
hours at soak load, and the broker's resident memory grew by about 0.4 MB a
minute (issue 12). Collecting the old generations is cheap here: frozen
objects are skipped, so a full collection scans only what changed since
start-up (the tokens, the requests in flight, the garbage).

Only the server process (``broker serve``, ``broker demo``) does this; an app
embedding :func:`broker.web.app.create_app` keeps its own settings.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

THRESHOLDS: Final = (10_000, 10, 10)
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
    _count_long_lived_afresh()


def _count_long_lived_afresh() -> None:
    """Collect the (now empty) generations once more.

    CPython runs a full collection only when the objects promoted to the oldest
    generation since the last one exceed a quarter of those it kept then. The
    last one is the collection before the freeze, which kept the whole start-up
    heap (tens of thousands of objects; a million at 10,000 providers), so garbage
    would wait for that many promotions. Collected after the freeze, the oldest
    generation holds nothing, and counting starts again from there.
    """
    gc.collect()


@contextlib.contextmanager
def thawed() -> Iterator[None]:
    """Unfreeze for a change of what lives (a reload), collect what it left, freeze again."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        _count_long_lived_afresh()
