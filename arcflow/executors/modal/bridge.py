"""From trio to the SDK's event loop and back, once per call.

Modal's client runs every ``.aio`` call on an asyncio loop in a thread of its own.
:class:`LoopBridge` runs a whole coroutine there (one sandbox's creation, or one
sandbox's run to completion), so the many SDK calls inside it need no thread hop
and no trio-asyncio step each: one crossing per call, cancelled as a unit.

Crossings are batched both ways: the coroutines trio callers start while the loop is
busy are started together by one wake-up of the loop, and the ones that finish together
wake trio once.  A thread wake-up is far dearer than the call it carries (at a thousand
calls in flight, one wake-up per call cost about a sixth of the process's CPU), and under
load most calls share one.

Cancellation: when the trio caller is cancelled, the coroutine's task is cancelled on
its loop (the coroutine sees ``CancelledError`` at its current await and cleans up: the
sandbox lifecycle terminates its sandbox at once), and the caller waits, shielded, at
most ``unwind_s`` for it to finish before the cancellation goes on.  A coroutine that
was not started yet still starts when ``always_start`` (so its own cleanup runs), and
is cancelled at its first await.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

__all__ = ["LoopBridge"]

T = TypeVar("T")

log = logging.getLogger("arcflow.executors.modal")


class _Call(Generic[T]):
    """One coroutine run on the asyncio loop for one trio task."""

    __slots__ = ("_bridge", "_cancel_requested", "_done", "_entered", "_fn", "_task", "_token")

    def __init__(
        self,
        fn: Callable[[], Coroutine[Any, Any, T]],
        token: trio.lowlevel.TrioToken,
        done: trio.Event,
        bridge: LoopBridge,
    ) -> None:
        self._fn = fn
        self._token = token
        self._done = done
        self._bridge = bridge
        self._task: asyncio.Task[T] | None = None
        self._entered = False
        self._cancel_requested = False

    # -- on the asyncio loop --------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self._main())
        self._task = task
        task.add_done_callback(self._finished)

    async def _main(self) -> T:
        self._entered = True
        if self._cancel_requested:
            # Cancel after this first step, so the coroutine's own clean-up sees it: a task
            # cancelled before its first step would never run its body at all.
            task = self._task
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)
        return await self._fn()

    def cancel(self) -> None:
        if self._task is None or not self._entered:
            self._cancel_requested = True
        else:
            self._task.cancel()

    def _finished(self, task: asyncio.Task[T]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: nobody may be left to read it
        self._bridge._finished(self._token, self._done)

    # -- in trio, once done ---------------------------------------------------------------

    def succeeded(self) -> bool:
        task = self._task
        return (
            task is not None and task.done() and not task.cancelled() and task.exception() is None
        )

    def result(self) -> T:
        task = self._task
        assert task is not None and task.done()
        if task.cancelled():
            raise RuntimeError("the call was cancelled on the SDK's event loop")
        return task.result()


def _spawn(
    loop: asyncio.AbstractEventLoop, fn: Callable[[T], Coroutine[Any, Any, None]], value: T
) -> None:
    """(on the loop) Run ``fn(value)`` as a task of its own."""
    task = loop.create_task(fn(value))
    _background.add(task)
    task.add_done_callback(_background.discard)


#: Tasks started by _spawn, kept referenced until they finish.
_background: set[asyncio.Task[None]] = set()


class LoopBridge:
    """Runs coroutines on ``loop`` (another thread's asyncio loop) from trio."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        #: Calls to start on the loop, and whether a wake-up of the loop is on its way.
        self._starts: list[_Call[Any]] = []
        self._start_scheduled = False
        #: Finished calls to tell trio about, per trio run, and the runs with a wake-up sent.
        self._dones: dict[trio.lowlevel.TrioToken, list[trio.Event]] = {}

    def _start(self, call: _Call[Any]) -> None:
        """(trio) Have the loop start ``call``, with the others of this batch."""
        with self._lock:
            self._starts.append(call)
            if self._start_scheduled:
                return
            self._start_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._start_batch)
        except RuntimeError:  # the loop is closed: nothing of this batch will start
            with self._lock:
                self._starts.clear()
                self._start_scheduled = False
            raise

    def _start_batch(self) -> None:
        """(on the loop) Start the calls handed over since the last wake-up."""
        with self._lock:
            calls, self._starts = self._starts, []
            self._start_scheduled = False
        for call in calls:
            call.start(self.loop)

    def _finished(self, token: trio.lowlevel.TrioToken, done: trio.Event) -> None:
        """(on the loop) Tell trio that a call finished, with the others of this batch."""
        with self._lock:
            waiting = self._dones.get(token)
            if waiting is not None:
                waiting.append(done)
                return
            self._dones[token] = [done]
        try:
            token.run_sync_soon(self._wake, token)
        except trio.RunFinishedError:
            with self._lock:
                self._dones.pop(token, None)

    def _wake(self, token: trio.lowlevel.TrioToken) -> None:
        """(trio) Wake the callers whose calls finished."""
        with self._lock:
            events = self._dones.pop(token, [])
        for event in events:
            event.set()

    async def run(
        self,
        fn: Callable[[], Coroutine[Any, Any, T]],
        *,
        unwind_s: float,
        always_start: bool = False,
        abandon: Callable[[T], Coroutine[Any, Any, None]] | None = None,
    ) -> T:
        """Run ``fn()`` on the loop and return its result (or raise its exception).

        Cancelled, the coroutine is cancelled too and given ``unwind_s`` seconds
        (shielded) to finish.  Without ``always_start``, a caller cancelled before the
        call does not start it.  If the coroutine had already returned when the
        cancellation reached it, its result is handed to ``abandon()`` (run on the loop:
        for a sandbox just created, terminate it).
        """
        if not always_start:
            await trio.lowlevel.checkpoint_if_cancelled()
        done = trio.Event()
        call = _Call(fn, trio.lowlevel.current_trio_token(), done, self)
        self._start(call)
        try:
            await done.wait()
        except trio.Cancelled:
            try:
                self.loop.call_soon_threadsafe(call.cancel)
            except RuntimeError:  # the loop is closed: the call went with it
                closed = True
            else:
                closed = False
            if closed:
                raise
            with trio.move_on_after(unwind_s, shield=True) as waited:
                await done.wait()
            if waited.cancelled_caught:
                log.warning(
                    "modal: a cancelled call did not finish within %gs; it goes on in the background",
                    unwind_s,
                )
            elif abandon is not None and call.succeeded():
                orphan = call.result()
                self.loop.call_soon_threadsafe(_spawn, self.loop, abandon, orphan)
            raise
        return call.result()
