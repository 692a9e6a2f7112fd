"""The one owner of the engine's background tasks: refresh loops, token requests in
flight, sink-file expiries and reloads.

asyncio keeps only a weak reference to a task, so whoever starts one must hold it; and
at shutdown every task must be cancelled or waited for, or the loop closes over pending
tasks. Each module used to keep its own dict or set for this. Here one object holds them
all, so a shutdown is one call and nothing is left behind.

Not :class:`asyncio.TaskGroup`: a failing child cancels its siblings there, and the
engine's tasks are independent (a provider's failed request must not stop another
provider's refresh loop); nor is it scoped to one ``async with`` block, since the engine
outlives the code that starts its tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from broker.core.errors import BrokerError

T = TypeVar("T")

log = logging.getLogger("broker.manager")


class Background:
    """Starts named tasks, holds them until they end, and cancels what is left at close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run *coro* as a task named *name*; refused once :meth:`close` has begun."""
        if self._closed:
            coro.close()  # never awaited: close it, or Python warns
            msg = f"the engine is shutting down: not starting {name}"
            raise RuntimeError(msg)
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved, so asyncio does not report it at collection
        # The engine's own failures (BrokerError) are logged and counted where they happen
        # and handed to whoever awaits the task; anything else is a bug worth a traceback.
        if exc is not None and not isinstance(exc, BrokerError):
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def named(self, prefix: str) -> list[asyncio.Task[Any]]:
        """The running tasks whose name starts with *prefix* (e.g. ``"fetch:"``)."""
        return [task for task in self._tasks if task.get_name().startswith(prefix)]

    @staticmethod
    async def cancel(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
        """Cancel *tasks* (``None`` entries skipped) and wait until they have ended."""
        running = [task for task in tasks if task is not None]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def close(self) -> None:
        """Refuse new tasks, cancel every one still running and wait for them to end."""
        self._closed = True
        # A task may have started another before it saw its cancellation; spawn refuses
        # from now on, so this ends.
        while self._tasks:
            await self.cancel(list(self._tasks))
