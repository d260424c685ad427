"""The bridge from trio to the Modal SDK's own asyncio loop (arcflow.executors.modal.bridge)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import trio

from arcflow.executors.modal.bridge import LoopBridge


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # A plain selector loop of its own, run in its own thread, as the SDK's is (not whatever
    # loop the installed policy would make).
    loop = asyncio.SelectorEventLoop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_calls_run_on_the_loop_and_their_results_come_back(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Many calls at once run on the loop's thread, each result reaching its own caller."""
    bridge = LoopBridge(loop)
    seen: dict[int, int] = {}

    async def one(i: int) -> None:
        async def on_loop() -> int:
            assert asyncio.get_running_loop() is loop
            await asyncio.sleep(0.001 * (i % 5))
            return i * i

        seen[i] = await bridge.run(lambda: on_loop(), unwind_s=5)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert seen == {i: i * i for i in range(200)}


async def test_a_cancelled_caller_cancels_its_coroutine(loop: asyncio.AbstractEventLoop) -> None:
    """Cancelled in trio, the coroutine sees CancelledError on the loop and the caller returns."""
    bridge = LoopBridge(loop)
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.fail_after(20):
        with trio.move_on_after(0.2):
            await bridge.run(forever, unwind_s=5)
    assert cancelled.is_set()


async def test_a_closed_loop_fails_every_call_instead_of_hanging_the_next(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Once the SDK's loop is closed, each call raises at once; none waits for ever."""
    bridge = LoopBridge(loop)
    loop.call_soon_threadsafe(loop.stop)
    await trio.sleep(0.2)
    loop.close()

    async def nothing() -> None:
        return None

    with trio.fail_after(5):
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await bridge.run(nothing, unwind_s=1)
