"""Run a sync call in a worker thread from trio, cheaply: what the executors use.

:func:`run_in_thread` behaves as ``trio.to_thread.run_sync(fn, *args,
abandon_on_cancel=True, limiter=limiter)`` for the executors' purposes: the
call runs in one of trio's cached worker threads, in a copy of the caller's
context (so ``contextvars`` such as the log context are seen there), a
cancellation abandons the thread at once (its result is discarded), and a
limiter is held until the thread has really finished.

It costs much less per call, which matters at thousands of calls a second:

* results come back to the trio thread in batches: a finishing thread queues
  its result and wakes the trio thread only if nothing was queued yet, so a
  burst of completions costs one wake-up, not one each (``to_thread`` takes
  the entry queue's lock and writes to its wake-up socket for every call);
* no thread names are set (``to_thread`` names the OS thread before and after
  every call, two ``prctl`` calls through ``ctypes``), and no limiter is
  taken unless one is given.

It does not support ``trio.from_thread`` without an explicit ``trio_token``
(the worker does not know its parent task).
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio
from sniffio import current_async_library_cvar

T = TypeVar("T")

__all__ = ["run_in_thread"]


class _Call:
    """One call: the task waiting for it (None once abandoned) and what to do when it ends."""

    __slots__ = ("limiter", "on_exit", "result", "returns", "task")

    def __init__(
        self,
        task: trio.lowlevel.Task,
        limiter: trio.CapacityLimiter | None,
        on_exit: Callable[[], object] | None,
        returns: _Returns,
    ) -> None:
        self.task: trio.lowlevel.Task | None = task
        self.limiter = limiter
        self.on_exit = on_exit
        self.returns = returns
        self.result: outcome.Outcome[Any] | None = None

    def deliver(self, result: outcome.Outcome[Any]) -> None:
        """(worker thread) The call has finished: queue its result for the trio thread."""
        self.result = result
        self.returns.put(self)


class _Returns:
    """Finished calls waiting for the trio thread; one per trio run."""

    __slots__ = ("lock", "ready", "token")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.ready: list[_Call] = []

    def put(self, call: _Call) -> None:
        """(worker thread) Queue ``call``; wake the trio thread if it is the first queued."""
        with self.lock:
            ready = self.ready
            ready.append(call)
            first = len(ready) == 1
        if first:
            try:
                self.token.run_sync_soon(self.deliver)
            except trio.RunFinishedError:  # pragma: no cover - an abandoned call outlived the run
                pass

    def deliver(self) -> None:
        """(trio thread) Hand every queued result to its task; release limiters; run ``on_exit``."""
        with self.lock:
            ready, self.ready = self.ready, []
        reschedule = trio.lowlevel.reschedule
        for call in ready:
            if call.limiter is not None:
                call.limiter.release_on_behalf_of(call)
            if call.on_exit is not None:
                call.on_exit()
            task = call.task
            if task is not None:
                call.task = None
                assert call.result is not None
                reschedule(task, call.result)


_RETURNS: trio.lowlevel.RunVar[_Returns] = trio.lowlevel.RunVar("arcflow_thread_returns")


def _work(context: contextvars.Context, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    """(worker thread) ``fn(*args)`` in ``context``; refuses an async function's coroutine."""
    value = context.run(fn, *args)
    if inspect.iscoroutine(value):
        value.close()
        raise TypeError(
            "Trio expected a sync function, but {!r} appears to be asynchronous".format(
                getattr(fn, "__qualname__", fn)
            )
        )
    return value


def _abandon(call: _Call) -> Callable[[Any], trio.lowlevel.Abort]:
    def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
        call.task = None  # the result, when it comes, is dropped
        return trio.lowlevel.Abort.SUCCEEDED

    return abort


@trio.lowlevel.enable_ki_protection  # as trio's to_thread: no KeyboardInterrupt half-way
async def run_in_thread(
    fn: Callable[..., T],
    *args: Any,
    limiter: trio.CapacityLimiter | None = None,
    on_exit: Callable[[], object] | None = None,
) -> T:
    """``fn(*args)`` in a worker thread; abandoned (not waited for) if the caller is cancelled.

    ``limiter``, if given, is held from before the thread starts until it has
    finished, even after an abandon.  ``on_exit`` is called once, in the trio
    thread: when the thread has finished, abandoned or not (unless the run has
    ended first), or, if no thread was started (cancelled on entry), before
    this raises.
    """
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            returns = _RETURNS.get()
        except LookupError:
            returns = _Returns(trio.lowlevel.current_trio_token())
            _RETURNS.set(returns)
        call = _Call(trio.lowlevel.current_task(), limiter, on_exit, returns)
        if limiter is not None:
            await limiter.acquire_on_behalf_of(call)
        context = contextvars.copy_context()
        context.run(current_async_library_cvar.set, None)  # sniffio: not in trio in the thread
        try:
            trio.lowlevel.start_thread_soon(lambda: _work(context, fn, args), call.deliver)
        except BaseException:
            if limiter is not None:
                limiter.release_on_behalf_of(call)
            raise
    except BaseException:
        # No thread was started (cancelled on entry or while waiting for the limiter).
        if on_exit is not None:
            on_exit()
        raise
    value: T = await trio.lowlevel.wait_task_rescheduled(_abandon(call))
    return value
