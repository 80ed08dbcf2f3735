"""hub.aio.wait_event: the loops of the hub and the nodes stop when cancelled, whatever the timing."""

from __future__ import annotations

import asyncio

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

