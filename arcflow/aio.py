"""arcflow for asyncio programs: an :class:`arcflow.Runtime` driven from asyncio coroutines.

::

    import arcflow.aio

    async def main() -> None:
        async with arcflow.aio.open_runtime(db=DSN, batch_size=500, flush_interval=5) as rt:
            await rt.record(outcome)           # waits while the pipeline is full
            rt.record_nowait(outcome)          # or raises arcflow.PipelineFull
            print(await rt.statistics())
        # leaving the block drains: every accepted outcome is written (or spilled)

    asyncio.run(main())

How it works (and why this bridge)
----------------------------------
The runtime is a trio program whose database writes go through trio-asyncio.
:class:`AsyncioRuntime` runs it with ``trio.run`` in a dedicated thread, and
the host's coroutines hand items over through that run's
:class:`trio.lowlevel.TrioToken`; the runtime reports back with
``loop.call_soon_threadsafe``.  Nothing of the host's loop is shared with the
runtime: the runtime's asyncpg connections live on its own trio-asyncio loop
in its own thread, and the host's asyncpg (or any other asyncio code) keeps
running on the host loop, untouched.

Trio's guest mode (``trio.lowlevel.start_guest_run`` on the host loop) was
tried and rejected: trio-asyncio inside a guest run shares the thread with the
host loop, so C-level asyncio code that looks up "the running loop" (for
example ``asyncio.Future()`` created without a loop, as libraries do) finds
the *host* loop instead of trio-asyncio's and binds futures to the wrong loop.
A thread of its own gives trio-asyncio a thread with no other loop in it,
which is what it is built for.

Hand-over and backpressure
--------------------------
Every ``submit``/``record`` takes one of ``buffer`` hand-over slots; a slot is
given back when the runtime has accepted the item into its pipeline (its
bounded channels).  ``await submit()`` returns once the runtime accepted the
item (and raises what the runtime raised); when no slot is free it waits, in
FIFO order.  ``submit_nowait()`` never blocks the event loop: it takes a free
slot or raises :class:`arcflow.PipelineFull`.  So a stalled database fills
the runtime's channels, then the slots, then makes ``submit`` wait and
``submit_nowait`` raise.  Cancelling a ``submit`` that already holds a slot
does not take the item back: it is delivered (at most once; the table key
``(run_id, scenario_id, attempt)`` makes a replayed write a no-op anyway).

Stopping
--------
Leaving the block (or ``await rt.aclose()``) stops taking items, delivers the
ones in hand-over, and leaves the runtime's block, which drains the pipeline.
Leaving by an exception or a cancellation drains as a cancelled trio host
does: running scenarios are cancelled (recorded ``cancelled``), queued ones
are not started, the hand-over and the drain are bounded by
``shutdown_timeout``, and what is still in memory then goes to the run's spill
journal (replayed by the next runtime with the same ``run_id``).  The host's
cancellation is held back until the drain has finished, then re-raised.

Executors run in the runtime's trio thread: ``python:`` functions are trio
(or sync) code.  To run scenarios as asyncio coroutines on the host's loop,
use :class:`HostExecutor`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeAlias

import trio
import trio.lowlevel

from ._trio_asyncio import import_trio_asyncio
from .errors import ArcflowError, ConfigError, PipelineFull, RuntimeClosed, primary_error
from .executors.host import HostExecutor
from .models import Outcome, Scenario
from .runtime import Runtime
from .slots import FifoSlots
from .stats import RuntimeStatistics

__all__ = ["AsyncioRuntime", "HostExecutor", "open_runtime"]

log = logging.getLogger("arcflow.aio")

P = ParamSpec("P")

#: An item in hand-over, and the host future to resolve when the runtime took it (None: nowait).
_Item: TypeAlias = "tuple[Scenario | Outcome, asyncio.Future[None] | None]"
#: A hand-over's future and the runtime's refusal (None: accepted).
_Ack: TypeAlias = "tuple[asyncio.Future[None] | None, BaseException | None]"

#: Acknowledgements sent back to the host in one loop callback, at most.
_ACK_CHUNK = 512


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _HostStopped(Exception):
    """Raised inside the runtime's block to make it drain as a cancelled host."""


class AsyncioRuntime:
    """An :class:`arcflow.Runtime` running in a thread of its own, used from asyncio coroutines.

    ::

        rt = AsyncioRuntime(arcflow.Runtime(db=DSN, batch_size=500), buffer=256)
        async with rt:
            await rt.record(outcome)

    ``buffer`` is the number of hand-overs that may be on their way to the
    runtime at once (see the module docs).  Use an instance from the event
    loop that started it, and start it once.
    """

    def __init__(self, runtime: Runtime, *, buffer: int = 256) -> None:
        if not isinstance(runtime, Runtime):
            raise TypeError(
                f"AsyncioRuntime needs an arcflow.Runtime, got {type(runtime).__name__}"
            )
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ConfigError(f"invalid buffer={buffer!r}: must be a whole number >= 1")
        self._runtime = runtime
        self._buffer = buffer
        self._state = _State.NEW
        # -- host side (used only in the host loop's thread) --
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._started: asyncio.Future[BaseException | None] | None = None
        self._finished: asyncio.Future[BaseException | None] | None = None
        self._slots = FifoSlots(buffer)
        self._final_statistics: RuntimeStatistics | None = None
        self._failure: BaseException | None = None
        self.refused_nowait = 0
        # -- crossing (guarded by _lock) --
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._early: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        # -- trio side (used only in the runtime's thread) --
        self._stop = trio.Event()
        self._stop_cancelled = False
        self._entered = False
        self._startup_scope: trio.CancelScope | None = None
        self._deliver_scope: trio.CancelScope | None = None
        self._intake: trio.MemorySendChannel[_Item] | None = None
        self._intake_recv: trio.MemoryReceiveChannel[_Item] | None = None
        self._current: _Item | None = None
        #: Outcomes taken but not delivered (runtime gone or drain timed out); spilled at the end.
        self.spilled_outcomes = 0
        #: Scenarios taken but not delivered when the runtime stopped (not started, like queued ones).
        self.not_started = 0

    # -- what the host may read ---------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The wrapped runtime: read its ``run_id``, ``config``; call its methods only through this object."""
        return self._runtime

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._runtime.run_id

    @property
    def buffer(self) -> int:
        """Hand-over slots (items on their way to the runtime at once)."""
        return self._buffer

    @property
    def in_flight(self) -> int:
        """Items handed over and not yet accepted by the runtime."""
        return self._slots.taken

    @property
    def running(self) -> bool:
        """True between a successful start and the beginning of the stop."""
        return self._state is _State.RUNNING

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncioRuntime:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # asyncio side of the thread bridge, no trio scope to shield with: _close holds the
        # host's cancellation back (_wait_finished) and re-raises it after; leaving by an
        # exception or a cancellation makes the stop a cancelled one, bounded by shutdown_timeout.
        await self._close(cancelled=exc_type is not None)  # noqa: ASYNC102 - see above

    async def start(self) -> None:
        """Start the runtime's thread and wait until the runtime takes items.

        Raises what the runtime raised while starting (``DatabaseUnavailable``,
        ``ConfigError``, ...).  Cancelling the wait stops the runtime first.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("an AsyncioRuntime can be started only once")
        import_trio_asyncio()  # here, in the host's thread: keep the host's new_event_loop
        loop = asyncio.get_running_loop()
        executor = self._runtime.executor
        if isinstance(executor, HostExecutor):
            executor.bind(loop)
        self._loop = loop
        self._host_thread = threading.get_ident()
        self._started = loop.create_future()
        self._finished = loop.create_future()
        self._state = _State.STARTING
        self._thread = threading.Thread(
            target=self._thread_main, name=f"arcflow-runtime-{self.run_id}", daemon=True
        )
        self._thread.start()
        try:
            failure = await asyncio.shield(self._started)
        except asyncio.CancelledError:
            # Cancel the startup (or make it a cancelled, bounded drain), wait for the thread
            # with further cancellations held back, then re-raise: asyncio side, no trio scope.
            self._post(self._request_stop, True)
            await self._wait_finished()  # noqa: ASYNC102 - bounded cancelled stop, re-raised
            self._state = _State.CLOSED
            raise
        if failure is not None:
            # The runtime's thread is leaving trio.run already.  A cancellation meanwhile
            # does not hide the failure: it propagates (as trio and asyncio.TaskGroup do).
            await self._wait_finished()
            self._state = _State.CLOSED
            raise failure
        self._state = _State.RUNNING

    async def aclose(self) -> None:
        """Stop taking items, deliver those in hand-over, drain the runtime, wait for it.

        Raises the runtime's failure, if it failed.  Calling it again waits for the same end.
        """
        await self._close(cancelled=False)

    async def _close(self, *, cancelled: bool) -> None:
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        if self._state is _State.STARTING:
            raise RuntimeError("AsyncioRuntime.start() has not finished")
        if self._state is _State.RUNNING:
            self._state = _State.CLOSING
            self._slots.fail_waiters(
                RuntimeClosed("the runtime is stopping; submit()/record() are refused")
            )
            self._post(self._request_stop, cancelled)
        interrupted = await self._wait_finished()
        self._state = _State.CLOSED
        if interrupted:
            raise asyncio.CancelledError()
        if self._failure is not None:
            raise self._failure

    async def _wait_finished(self) -> bool:
        """Wait for the runtime's thread to end, holding back the host's cancellation.

        A cancellation turns the stop into a cancelled one (bounded drain).
        Returns True if the host was cancelled meanwhile: the caller must then
        raise :class:`asyncio.CancelledError` (or a failure of its own).
        """
        assert self._finished is not None
        interrupted = False
        while not self._finished.done():
            try:
                await asyncio.shield(self._finished)
            # Delayed, not swallowed: held until the runtime's thread has ended (the cancelled
            # stop requested here bounds its drain by shutdown_timeout), then reported as
            # interrupted=True for the caller to raise.  Counted even if the thread ended
            # just now: the host's cancel() must not be lost.
            except asyncio.CancelledError:  # noqa: ASYNC103 - delayed; the callers re-raise it
                interrupted = True
                if not self._finished.done():
                    self._post(self._request_stop, True)
        if self._thread is not None:
            self._thread.join(timeout=10)  # it has already left trio.run
        return interrupted

    # -- handing items over --------------------------------------------------------------------------

    async def submit(self, scenario: Scenario) -> None:
        """Queue ``scenario`` to run; returns once the runtime accepted it, waits while it is full.

        Raises :class:`arcflow.RuntimeClosed` when the runtime is stopping or has
        no executor.
        """
        if self._runtime.executor is None:
            raise RuntimeClosed("this runtime has no executor: use record() for finished outcomes")
        await self._hand_over(scenario)

    def submit_nowait(self, scenario: Scenario) -> None:
        """Queue ``scenario`` without waiting, or raise :class:`arcflow.PipelineFull`."""
        if self._runtime.executor is None:
            raise RuntimeClosed("this runtime has no executor: use record() for finished outcomes")
        self._hand_over_nowait(scenario)

    async def record(self, outcome: Outcome) -> None:
        """Hand a finished outcome to the batched writer; returns once accepted, waits while full."""
        await self._hand_over(outcome)

    def record_nowait(self, outcome: Outcome) -> None:
        """Hand a finished outcome over without waiting, or raise :class:`arcflow.PipelineFull`."""
        self._hand_over_nowait(outcome)

    async def statistics(self) -> RuntimeStatistics:
        """A snapshot of the runtime's counters (the final one once it has stopped)."""
        self._check_thread()
        if self._state is _State.CLOSED and self._final_statistics is not None:
            return self._final_statistics
        if self._state not in (_State.RUNNING, _State.CLOSING):
            raise RuntimeClosed("the runtime is not running")
        assert self._loop is not None and self._finished is not None
        answer: asyncio.Future[RuntimeStatistics] = self._loop.create_future()

        def snapshot() -> None:  # in the runtime's thread
            try:
                stats = self._runtime.statistics()
            # A sync callback in the trio thread: no checkpoint, so no Cancelled; the error
            # is forwarded to the host's await, which raises it.
            except BaseException as exc:  # noqa: ASYNC103  # pragma: no cover - statistics() does not raise
                self._to_host(_settle, answer, None, exc)
            else:
                self._to_host(_settle, answer, stats, None)

        if self._post(snapshot):
            either: set[asyncio.Future[Any]] = {answer, self._finished}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                return answer.result()
        if await self._wait_finished():
            raise asyncio.CancelledError()
        if self._final_statistics is None:  # pragma: no cover - set before _finished
            raise RuntimeClosed("the runtime stopped")
        return self._final_statistics

    def _check_thread(self) -> None:
        if self._host_thread is not None and threading.get_ident() != self._host_thread:
            raise RuntimeError("use an AsyncioRuntime from the event loop thread that started it")

    def _check_open(self) -> None:
        self._check_thread()
        if self._state is not _State.RUNNING:
            if self._failure is not None:
                raise RuntimeClosed(f"the runtime failed: {self._failure}") from self._failure
            raise RuntimeClosed("the runtime is not running (not started, stopping or stopped)")

    async def _hand_over(self, item: Scenario | Outcome) -> None:
        self._check_open()
        assert self._loop is not None
        if not self._slots.try_acquire():
            await self._slots.acquire()
            if self._state is not _State.RUNNING:
                self._slots.release(1)
                self._check_open()
        accepted: asyncio.Future[None] = self._loop.create_future()
        if not self._post(self._enqueue, (item, accepted)):
            self._slots.release(1)
            raise RuntimeClosed("the runtime has stopped")
        await accepted

    def _hand_over_nowait(self, item: Scenario | Outcome) -> None:
        self._check_open()
        if not self._slots.try_acquire():
            raise PipelineFull(
                f"the pipeline is full ({self._slots.taken} hand-overs waiting for the runtime); "
                "await submit()/record() to wait for room, or shed the load"
            )
        if not self._post(self._enqueue, (item, None)):
            self._slots.release(1)
            raise RuntimeClosed("the runtime has stopped")

    # -- host-side callbacks (run by the host loop, scheduled from the runtime's thread) ---------

    def _host_acks(self, acks: list[_Ack]) -> None:
        for accepted, exc in acks:
            if accepted is None:
                if exc is not None:
                    self.refused_nowait += 1
                    log.error("run %s: a *_nowait() hand-over was refused: %s", self.run_id, exc)
            elif not accepted.done():
                if exc is None:
                    accepted.set_result(None)
                else:
                    accepted.set_exception(exc)
        self._slots.release(len(acks))

    def _host_started(self, failure: BaseException | None) -> None:
        assert self._started is not None
        if not self._started.done():
            self._started.set_result(failure)

    def _host_finished(
        self, failure: BaseException | None, stats: RuntimeStatistics | None
    ) -> None:
        assert self._finished is not None
        self._final_statistics = stats
        if self._state is _State.RUNNING:  # the runtime ended on its own (it failed)
            self._state = _State.CLOSING
        self._failure = failure
        self._slots.fail_waiters(RuntimeClosed("the runtime has stopped"))
        self._host_started(failure or RuntimeClosed("the runtime stopped before it started"))
        if not self._finished.done():
            self._finished.set_result(failure)

    # -- crossing between the threads -------------------------------------------------------------

    def _post(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` in the runtime's trio thread, soon; False if that run has ended."""
        with self._lock:
            token = self._token
            if token is None:
                self._early.append((fn, args))
                return True
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def _to_host(self, fn: Callable[..., object], *args: Any) -> bool:
        """Run ``fn(*args)`` in the host loop, soon (from the runtime's thread); False if it is closed."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            return False
        return True

    def _to_host_or_stop(self, fn: Callable[..., object], *args: Any) -> None:
        """:meth:`_to_host` inside the trio run; if the host loop is gone, stop as if cancelled."""
        if not self._to_host(fn, *args) and not self._stop.is_set():
            log.error("run %s: the asyncio host loop closed under a running runtime", self.run_id)
            self._request_stop(True)

    # -- the runtime's thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        failure: BaseException | None = None
        stats: RuntimeStatistics | None = None
        try:
            failure, stats = trio.run(self._trio_main)
        # A plain thread around trio.run (no Cancelled escapes it): the error is forwarded to
        # the host, which raises it from aclose()/start().
        except BaseException as exc:  # noqa: ASYNC103  # pragma: no cover - _trio_main catches what it can
            failure = exc
        finally:
            if not self._to_host(self._host_finished, failure, stats):
                log.error("run %s: ended after its asyncio host loop closed", self.run_id)

    async def _trio_main(self) -> tuple[BaseException | None, RuntimeStatistics | None]:
        send, recv = trio.open_memory_channel[_Item](math.inf)
        self._intake, self._intake_recv = send, recv
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            early, self._early = self._early, []
        for fn, args in early:
            fn(*args)
        failure: BaseException | None = None
        try:
            with trio.CancelScope() as startup:
                self._startup_scope = startup
                if self._stop.is_set():
                    startup.cancel()
                async with self._runtime:
                    self._entered = True
                    self._startup_scope = None
                    self._to_host_or_stop(self._host_started, None)
                    await self._serve(send, recv)
            if not self._entered:
                failure = RuntimeClosed("the runtime was stopped before it started")
        # The top of this thread's trio.run: no enclosing cancel scope, so no Cancelled
        # reaches here; what the runtime raised is the run's result, raised to the host.
        except BaseException as exc:  # noqa: ASYNC103 - the run's failure, forwarded
            failure = _without_host_stopped(exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._settle_leftovers()
        if not self._entered:
            self._to_host(self._host_started, failure)
        stats = self._runtime.statistics() if self._entered else None
        return failure, stats

    async def _serve(
        self, send: trio.MemorySendChannel[_Item], recv: trio.MemoryReceiveChannel[_Item]
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, recv)
            await self._stop.wait()
            send.close()  # every item posted before the stop request is in the channel already
        if self._stop_cancelled:
            raise _HostStopped("the asyncio host left its block by an exception or a cancellation")

    def _enqueue(self, item: _Item) -> None:
        assert self._intake is not None
        try:
            self._intake.send_nowait(item)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._to_host_or_stop(
                self._host_acks, [(item[1], RuntimeClosed("the runtime has stopped"))]
            )

    def _request_stop(self, cancelled: bool) -> None:
        if cancelled and not self._stop_cancelled:
            self._stop_cancelled = True
            if self._deliver_scope is not None:
                self._deliver_scope.deadline = min(
                    self._deliver_scope.deadline,
                    trio.current_time() + self._runtime.config.shutdown_timeout,
                )
            if self._stop.is_set() and self._entered:
                self._runtime.cancel_running()  # already draining: make it a cancelled drain
        if not self._entered and self._startup_scope is not None:
            self._startup_scope.cancel()
        self._stop.set()

    async def _pump(self, recv: trio.MemoryReceiveChannel[_Item]) -> None:
        """Deliver hand-overs to the runtime in order; acknowledge them to the host in chunks."""
        rt = self._runtime
        acks: list[_Ack] = []

        def flush() -> None:
            if acks:
                self._to_host_or_stop(self._host_acks, acks.copy())
                acks.clear()

        with trio.CancelScope() as scope:
            self._deliver_scope = scope
            if self._stop_cancelled:
                scope.deadline = trio.current_time() + rt.config.shutdown_timeout
            try:
                while True:
                    try:
                        item = recv.receive_nowait()
                    except trio.WouldBlock:
                        flush()
                        try:
                            item = await recv.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    self._current = item
                    value, accepted = item
                    error: BaseException | None = None
                    try:
                        try:
                            if isinstance(value, Outcome):
                                rt.record_nowait(value)
                            else:
                                rt.submit_nowait(value)
                        except trio.WouldBlock:
                            flush()
                            if isinstance(value, Outcome):
                                await rt.record(value)
                            else:
                                await rt.submit(value)
                    except ArcflowError as exc:
                        error = exc
                    self._current = None
                    acks.append((accepted, error))
                    if len(acks) >= _ACK_CHUNK:
                        flush()
            finally:
                flush()
                self._deliver_scope = None
        if scope.cancelled_caught:
            log.error(
                "run %s: hand-overs not delivered within shutdown_timeout=%gs; spilling them",
                self.run_id,
                rt.config.shutdown_timeout,
            )

    async def _settle_leftovers(self) -> None:
        """After the runtime's block: spill undelivered outcomes, refuse undelivered scenarios."""
        left: list[_Item] = []
        if self._current is not None:
            left.append(self._current)
            self._current = None
        if self._intake is not None:
            self._intake.close()
        if self._intake_recv is not None:
            while True:
                try:
                    left.append(self._intake_recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        if not left:
            return
        outcomes = [value for value, _ in left if isinstance(value, Outcome)]
        spill_error: BaseException | None = None
        if outcomes:
            try:
                await self._runtime.spill(outcomes)
            except Exception as exc:
                spill_error = exc
                log.critical(
                    "run %s: could not spill %d undelivered outcomes to %s: %s",
                    self.run_id,
                    len(outcomes),
                    self._runtime.journal_path,
                    exc,
                )
            else:
                self.spilled_outcomes += len(outcomes)
                log.error(
                    "run %s: spilled %d undelivered outcomes to %s (replayed by the next runtime "
                    "with this run id)",
                    self.run_id,
                    len(outcomes),
                    self._runtime.journal_path,
                )
        acks: list[_Ack] = []
        for value, accepted in left:
            if isinstance(value, Outcome):
                acks.append((accepted, spill_error))
            else:
                self.not_started += 1
                acks.append(
                    (accepted, RuntimeClosed("the runtime stopped before taking the scenario"))
                )
        self._to_host(self._host_acks, acks)


def _settle(
    future: asyncio.Future[RuntimeStatistics],
    value: RuntimeStatistics | None,
    exc: BaseException | None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert value is not None
        future.set_result(value)


def _without_host_stopped(exc: BaseException) -> BaseException | None:
    """``exc`` minus :class:`_HostStopped` (ours, not a failure); single leaves unwrapped."""
    rest: BaseException | None = exc
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(_HostStopped)
    elif isinstance(exc, _HostStopped):
        rest = None
    return primary_error(rest) if rest is not None else None


def _asyncio_opener(cls: Callable[P, Runtime]) -> Callable[P, AsyncioRuntime]:
    def open_runtime(*args: P.args, **kwargs: P.kwargs) -> AsyncioRuntime:
        """A new :class:`AsyncioRuntime`, to use as ``async with open_runtime(...) as rt``.

        Takes exactly the arguments of :class:`arcflow.Runtime` (``executor``,
        ``db``, ``run_id``, hooks, and any :class:`arcflow.RuntimeConfig` field
        as a keyword), with the default hand-over ``buffer``; for another one use
        ``AsyncioRuntime(arcflow.Runtime(...), buffer=N)``.  Hooks
        (``on_outcome``, ``on_batch_written``) run in the runtime's thread.
        """
        return AsyncioRuntime(cls(*args, **kwargs))

    open_runtime.__qualname__ = "open_runtime"
    open_runtime.__module__ = __name__
    return open_runtime


open_runtime = _asyncio_opener(Runtime)
