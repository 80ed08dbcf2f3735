"""asyncio helpers shared by the hub and the nodes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it was set.

    Long-running loops use this instead of ``asyncio.wait_for(event.wait(), t)``: on Python 3.11
    that swallows a cancellation which arrives as the event is set, and the loop then runs on
    after its owner asked it to stop. ``asyncio.timeout`` tells the two apart.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


class TurnBatcher(Generic[T, R]):
    """Work asked for in one turn of the event loop, run as a few chunks (one per worker, at most
    ``chunk`` items each) rather than a task per item: a task on a thread or process pool costs a
    future, a lock and a wake-up of the loop, more than checking one small packet.

    ``execute(items)`` runs one chunk (on some pool) and returns one result per item; if it
    raises, every item of that chunk gets the exception. With ``inline``, a turn that asks for
    one item while no chunk is running has it done by ``inline([item])`` right there, on the
    event loop: when work comes one item at a time, the round trip to a pool thread and back
    (two waits for the GIL behind busy threads) costs more than the work.
    """

    def __init__(self, execute: Callable[[list[T]], Awaitable[list[R]]], *, workers: int, chunk: int,
                 inline: Callable[[list[T]], list[R]] | None = None) -> None:
        self._execute, self._workers, self._chunk, self._inline = execute, max(1, workers), chunk, inline
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> bool:
        """No work waiting or running."""
        return not self._pending and not self._tasks

    def __call__(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self._inline is not None and len(pending) == 1 and not self._tasks:
            item, fut = pending[0]
            try:
                [result] = self._inline([item])
            except Exception as exc:
                if not fut.done():
                    fut.set_exception(exc)
                return
            if not fut.done():
                fut.set_result(result)
            return
        size = max(1, min(self._chunk, -(-len(pending) // self._workers)))  # spread over every worker
        for i in range(0, len(pending), size):
            task = asyncio.ensure_future(self._run(pending[i:i + size]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, chunk: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._execute([item for item, _ in chunk])
        except BaseException as exc:  # the pool shut down under it, or cancelled: the waiters learn of it
            for _, fut in chunk:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), result in zip(chunk, results):
            if not fut.done():
                fut.set_result(result)


#: The first SIGTERM or SIGINT noted by :func:`defer_stop_signals`.
_stop_requested: list[int] = []


def defer_stop_signals() -> None:
    """From a service's first moments, SIGTERM and SIGINT are noted rather than fatal: a hub told
    to stop while it opens its database finishes starting, then drains at once and says so
    (it died with code 143 and no log line). A second one of the same signal takes its default
    effect (Ctrl-C twice at a passphrase prompt aborts). The event loop's own handlers take over
    once serving."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note_stop)


def _note_stop(signum: int, _frame: object) -> None:
    if signum not in _stop_requested:
        _stop_requested.append(signum)
        return
    # The same signal twice: whatever the start is waiting for (a passphrase prompt, a hung
    # disk) is not worth waiting for. It takes its default effect now.
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stop_requested() -> int | None:
    """The signal that asked to stop before the event loop's handlers were installed, if any."""
    return _stop_requested[0] if _stop_requested else None
