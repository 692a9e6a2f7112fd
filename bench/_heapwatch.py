"""Run the ``broker`` command with a thread that watches its heap, for leak hunting.

    python -m bench._heapwatch --out heap.jsonl [--every 60] [--trace 1] -- serve --config X

``bench/soak.py --heapwatch FILE`` starts the broker this way. The broker runs
in this process exactly as ``python -m broker`` would (the same ``main``, the
same garbage-collector settings); every *every* seconds a daemon thread
appends one JSON line to *out*:

* ``rss_mb``, the collector's per-generation counts and collections so far,
  ``frozen`` (``gc.get_freeze_count()``), the number of objects each
  generation holds, and ``pause_ms``: the longest collection of each
  generation since the last sample (timed with ``gc.callbacks``);
* ``types``: the gc-tracked object types whose count changed most since the
  first sample (the baseline);
* with ``--trace N``: ``tracemalloc`` started before the broker is imported,
  ``traced_mb``, and the allocation sites (N frames each) that grew most since
  the baseline;
* with ``--garbage-every K``: every K-th sample also runs one full collection
  with ``gc.DEBUG_SAVEALL`` and reports what it found unreachable (object
  types and count) and the resident memory after it. That changes the run
  (the garbage is then gone), so it is off by default.

Nothing here is part of the broker; it is a diagnostic for ``bench/soak.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
import types as types_module
from collections import Counter
from pathlib import Path
from typing import Any

TOP: int = 25


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def type_counts(objects: list[Any]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)


def tracked_types() -> Counter[str]:
    """Types of the gc-tracked objects in the three generations.

    The frozen ones (the permanent generation) are left out: they cannot be listed without
    unfreezing, and freezing again would freeze everything young too. Their number is
    ``frozen`` in each sample.
    """
    return type_counts(gc.get_objects())


class Watcher:
    def __init__(self, out: Path, every: float, trace: int, garbage_every: int) -> None:
        self.out = out
        self.every = every
        self.trace = trace
        self.garbage_every = garbage_every
        self.started = time.monotonic()
        self.base_types: Counter[str] | None = None
        self.base_sites: dict[str, tuple[int, int]] | None = None
        """Allocation site -> (bytes, blocks) at the first sample."""
        self.samples = 0
        self._pause_started = 0.0
        self.longest = [0.0, 0.0, 0.0]
        """The longest collection of each generation since the last sample (seconds)."""
        gc.callbacks.append(self._time_collection)

    def _time_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._pause_started = time.perf_counter()
            return
        took = time.perf_counter() - self._pause_started
        generation = info["generation"]
        self.longest[generation] = max(self.longest[generation], took)

    def run(self) -> None:
        while True:
            time.sleep(self.every)
            try:
                self.sample()
            except Exception as exc:  # a diagnostic must not take the broker down
                self.write({"error": repr(exc)})

    def write(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.monotonic() - self.started, 1), **record}
        with self.out.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def sample(self) -> None:
        self.samples += 1
        record: dict[str, Any] = {
            "rss_mb": round(rss_mb(), 2),
            "gc_count": gc.get_count(),
            "collections": [s["collections"] for s in gc.get_stats()],
            "collected": [s["collected"] for s in gc.get_stats()],
            "frozen": gc.get_freeze_count(),
            "generations": [len(gc.get_objects(g)) for g in range(3)],
            "pause_ms": [round(took * 1000, 2) for took in self.longest],
        }
        self.longest = [0.0, 0.0, 0.0]
        types = tracked_types()
        if self.base_types is None:
            self.base_types = types
        diff = Counter(types)
        diff.subtract(self.base_types)
        record["types"] = [
            [name, types[name], change]
            for name, change in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:TOP]
            if change
        ]
        if self.trace:
            record["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
            record["sites"] = self.grown_sites()
        if self.garbage_every and self.samples % self.garbage_every == 0:
            record["garbage"] = self.collect_garbage()
        self.write(record)

    def grown_sites(self) -> list[list[Any]]:
        """``[site, KiB now, KiB grown, blocks grown]`` of the sites that grew most."""
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
        )
        key = "traceback" if self.trace > 1 else "lineno"
        sites = {
            " <- ".join(f"{f.filename}:{f.lineno}" for f in stat.traceback): (stat.size, stat.count)
            for stat in snapshot.statistics(key)
        }
        del snapshot  # (its traces are a tuple per block: not to be counted next time)
        if self.base_sites is None:
            self.base_sites = sites
        grown = [
            (
                site,
                size,
                size - self.base_sites.get(site, (0, 0))[0],
                count - self.base_sites.get(site, (0, 0))[1],
            )
            for site, (size, count) in sites.items()
        ]
        grown.sort(key=lambda g: -abs(g[2]))
        return [
            [site, round(size / 1024, 1), round(diff / 1024, 1), blocks]
            for site, size, diff, blocks in grown[:TOP]
        ]

    def collect_garbage(self) -> dict[str, Any]:
        """One full collection that keeps what it finds, counted by type, then freed."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            found = gc.collect()
            types = type_counts(gc.garbage)
            frames = Counter(
                f"{o.f_code.co_filename}:{o.f_code.co_name}"
                for o in gc.garbage
                if isinstance(o, types_module.FrameType)
            )
            exceptions = Counter(
                f"{type(o).__module__}.{type(o).__qualname__}"
                for o in gc.garbage
                if isinstance(o, BaseException)
            )
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
        gc.collect()
        return {
            "unreachable": found,
            "types": types.most_common(TOP),
            "frames": frames.most_common(TOP),
            "exceptions": exceptions.most_common(TOP),
            "rss_mb_after": round(rss_mb(), 2),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--every", type=float, default=60)
    parser.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    parser.add_argument("--garbage-every", type=int, default=0)
    parser.add_argument("broker_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    broker_args = args.broker_args[1:] if args.broker_args[:1] == ["--"] else args.broker_args
    if args.trace:
        tracemalloc.start(args.trace)

    import broker  # after tracemalloc started, so its allocations are traced
    from broker.cli import main as broker_main

    watcher = Watcher(args.out, args.every, args.trace, args.garbage_every)
    watcher.write({"broker": broker.__file__, "cwd": os.getcwd(), "argv": broker_args})
    threading.Thread(target=watcher.run, name="heapwatch", daemon=True).start()
    return broker_main(broker_args)


if __name__ == "__main__":
    sys.exit(main())
