"""hub.aio: wait_event stops the loops of the hub and the nodes when cancelled, whatever the timing; TurnBatcher."""

from __future__ import annotations

import asyncio

import pytest

from hub.aio import TurnBatcher, wait_event


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



async def test_turn_batcher_runs_one_turns_items_as_chunks_in_order() -> None:
    calls: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        calls.append(items)
        return [i * 10 for i in items]

    batch = TurnBatcher(execute, workers=2, chunk=4)
    results = await asyncio.gather(*(batch(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # at most `chunk` each
    assert await asyncio.gather(*(batch(i) for i in range(3))) == [0, 10, 20]
    assert calls[-2:] == [[0, 1], [2]]  # spread over both workers


async def test_turn_batcher_hands_a_failed_chunk_to_each_of_its_waiters() -> None:
    async def execute(items: list[int]) -> list[int]:
        raise RuntimeError("pool stopped")

    batch = TurnBatcher(execute, workers=1, chunk=8)
    outcomes = await asyncio.gather(*(batch(i) for i in range(3)), return_exceptions=True)
    assert [str(o) for o in outcomes] == ["pool stopped"] * 3


async def test_a_lone_item_runs_inline_and_a_turn_of_several_goes_to_the_pool() -> None:
    pooled: list[list[int]] = []
    inlined: list[list[int]] = []

    async def execute(items: list[int]) -> list[int]:
        pooled.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    def inline(items: list[int]) -> list[int]:
        inlined.append(items)
        if items == [13]:
            raise ValueError("unlucky")
        return [i * 10 for i in items]

    batch = TurnBatcher(execute, workers=2, chunk=4, inline=inline)
    assert await batch(1) == 10 and inlined == [[1]] and pooled == []
    assert await asyncio.gather(*(batch(i) for i in range(2, 6))) == [20, 30, 40, 50]
    assert pooled == [[2, 3], [4, 5]] and inlined == [[1]]
    # A lone item while a chunk is still running joins the pool, not the event loop.
    running = asyncio.gather(batch(6), batch(7))
    await asyncio.sleep(0)
    assert await batch(8) == 80 and pooled[-1] == [8]
    await running
    with pytest.raises(ValueError, match="unlucky"):
        await batch(13)
    assert batch.idle
