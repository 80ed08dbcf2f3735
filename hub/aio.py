"""asyncio helpers shared by the hub and the nodes."""

from __future__ import annotations

import asyncio


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
