"""hub.aio.wait_event: the loops of the hub and the nodes stop when cancelled, whatever the timing."""

from __future__ import annotations

import asyncio

import pytest

from hub.aio import wait_event


async def test_a_cancellation_arriving_as_the_event_is_set_is_not_swallowed() -> None:
    # asyncio.wait_for(event.wait(), t) on Python 3.11 loses this cancellation: the loop runs on.
    ev = asyncio.Event()

    async def loop() -> None:
        for _ in range(1000):
            ev.clear()
            await wait_event(ev, 60)

    task = asyncio.create_task(loop())
    for _ in range(3):
        await asyncio.sleep(0)
    ev.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled()


async def test_wait_event_reports_set_or_timed_out() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, ev.set)
    assert await wait_event(ev, 5) is True


def test_the_old_idiom_loses_it() -> None:
    """The reason for the helper, shown: the same race with asyncio.wait_for."""
    async def main() -> bool:
        ev = asyncio.Event()

        async def loop() -> None:
            for _ in range(1000):
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), 60)
                except TimeoutError:
                    pass

        task = asyncio.create_task(loop())
        for _ in range(3):
            await asyncio.sleep(0)
        ev.set()
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
        swallowed = not task.done()
        task.cancel()
        await asyncio.wait([task], timeout=5)
        return swallowed

    import sys
    if sys.version_info >= (3, 12):
        pytest.skip("Python 3.12 rewrote wait_for on asyncio.timeout; the race is gone there")
    assert asyncio.run(main()) is True
