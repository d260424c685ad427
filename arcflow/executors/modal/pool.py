"""A warm pool for ``modal:``: long-lived sandboxes lent to one scenario at a time.

With ``ModalConfig(pool=N)`` (``--modal-pool N``) the executor does not create a sandbox
per scenario.  :class:`SandboxPool` has one job: **lend sandboxes**.  It keeps at most N
of them, each running ``pool_entrypoint`` (``sleep infinity``), hands a free one to each
attempt, which runs the scenario's command in it with ``Sandbox.exec`` under the usual
contract (:meth:`~.executor.ModalExecutor.run`), and takes it back:

* **Bounded.**  An attempt holds one of N slots (a FIFO :class:`trio.Semaphore`) from
  :meth:`SandboxPool.acquire` to :meth:`SandboxPool.release`; beyond N attempts wait
  for a free slot in their own task.  There is no queue of its own: the waiters are the
  producers, as many as the run's concurrency.
* **Made on demand.**  A slot with no idle sandbox makes one through the executor's
  creation path (``make``: the creation rate, the starting cap, the retries of refusals
  and outages), so the pool fills as fast as Modal allows it, and never beyond the run's
  concurrency.
* **Recycled** (terminated, its slot emptied; the next attempt makes a new one), with the
  reason counted in :class:`PoolStats`: after ``pool_max_uses`` scenarios
  (``max_uses``); after an attempt that ended in ``error`` (``error``: the command could
  not start, its output was lost, it crashed) or ``timeout`` (``timeout``), or was
  cancelled (``cancelled``: the only way to stop an exec is to terminate its sandbox, and
  the executor has done so); when the sandbox itself had ended (``died``); and, when it
  would be lent, if less than the attempt's timeout plus ``pool_lifetime_margin_s`` is
  left of its lifetime (``lifetime``).  A fresh sandbox is always lent.

What it retries: nothing itself (creations are retried by the executor's ``make``).
What it escalates: nothing; a creation that gives up is that attempt's ``error`` outcome
and frees the slot.  A sandbox it could not hand back for termination (the bridge to the
SDK failed) is logged and left to the end-of-run sweep by the process's tag.  It owns no
channel and closes none: it is called from the producers' tasks, holds no task of its
own, and :meth:`SandboxPool.close` (the executor's ``aclose``) terminates the idle
sandboxes.  Terminations run in the background on the SDK's loop
(:meth:`~.lifecycle.SandboxOps.retire`) and the backend's close waits for them.

Isolation given up: files, processes, environment and memory a scenario leaves in its
sandbox are seen by the next scenarios lent the same sandbox (see ``docs/executors.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from ...models import ExecutionResult
from .sandboxes import CreatedSandbox

__all__ = ["RECYCLE_REASONS", "PoolStats", "PooledSandbox", "SandboxPool"]

logger = logging.getLogger("arcflow.executors.modal")

#: Why a pooled sandbox was terminated and replaced.
RECYCLE_REASONS = ("max_uses", "error", "timeout", "cancelled", "died", "lifetime")

#: Makes a sandbox for the pool (the executor's creation path), or says why it could not.
Make = Callable[[], Awaitable[CreatedSandbox | ExecutionResult]]
#: Hands a sandbox over for termination (terminate, detach) in the background.
Retire = Callable[[CreatedSandbox], Awaitable[None]]


@attrs.define(eq=False)
class PooledSandbox:
    """One sandbox of the pool: when it was made, how long it lives, how often it was lent."""

    sandbox: CreatedSandbox
    #: trio time just before its creation was asked for (its lifetime starts later).
    born: float
    lifetime_s: float
    uses: int = 0

    @property
    def object_id(self) -> str:
        return self.sandbox.object_id

    def remaining(self, now: float) -> float:
        """Seconds of its lifetime left at ``now`` (counted from before it was created)."""
        return self.born + self.lifetime_s - now


def _reasons() -> dict[str, int]:
    return dict.fromkeys(RECYCLE_REASONS, 0)


@attrs.define
class PoolStats:
    """The pool's counters, written by :class:`SandboxPool` alone."""

    #: Sandboxes the pool keeps at most.
    size: int
    #: Sandboxes it holds now (idle or lent), lent now, attempts waiting for a slot.
    sandboxes: int = 0
    busy: int = 0
    waiting: int = 0
    #: Sandboxes made for the pool, and scenarios run in them.
    created: int = 0
    uses: int = 0
    #: Sandboxes terminated and replaced, by reason (:data:`RECYCLE_REASONS`).
    recycled: dict[str, int] = attrs.field(factory=_reasons)

    def as_metrics(self) -> dict[str, float]:
        """``modal_pool_*`` numbers for the live display and the metrics."""
        out: dict[str, float] = {
            "modal_pool_size": self.size,
            "modal_pool_sandboxes": self.sandboxes,
            "modal_pool_busy": self.busy,
            "modal_pool_waiting": self.waiting,
            "modal_pool_created": self.created,
            "modal_pool_uses": self.uses,
            "modal_pool_recycled": sum(self.recycled.values()),
        }
        # By reason once it happened (the live display shows every key on one line).
        out.update({f"modal_pool_recycled_{k}": v for k, v in self.recycled.items() if v})
        return out


class SandboxPool:
    """Lends at most ``size`` long-lived sandboxes, one attempt at a time each (see the module)."""

    def __init__(
        self,
        size: int,
        *,
        max_uses: int,
        lifetime_s: float,
        margin_s: float,
        retire: Retire,
        retire_timeout_s: float,
    ) -> None:
        if size < 1 or max_uses < 1:
            raise ValueError("a pool needs size >= 1 and max_uses >= 1")
        self.max_uses = max_uses
        self.lifetime_s = lifetime_s
        self.margin_s = margin_s
        self.stats = PoolStats(size=size)
        self._retire = retire
        self._retire_timeout_s = retire_timeout_s
        self._slots = trio.Semaphore(size)
        #: Sandboxes not lent now; the most recently returned is lent first.
        self._idle: list[PooledSandbox] = []
        self._closed = False

    async def acquire(self, make: Make, *, need_s: float) -> PooledSandbox | ExecutionResult:
        """A sandbox with at least ``need_s`` + the margin of lifetime left (waiting for a free
        slot first), or the error result of a creation that gave up.

        Give the sandbox back with :meth:`release`, whatever happens.
        """
        stats = self.stats
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            stats.waiting -= 1
        held = True
        try:
            if self._closed:
                raise RuntimeError("the modal: executor's pool is closed (aclose() was called)")
            while self._idle:
                pooled = self._idle.pop()
                if pooled.remaining(trio.current_time()) >= need_s + self.margin_s:
                    stats.busy += 1
                    held = False
                    return pooled
                await self._recycle(pooled, "lifetime")
            born = trio.current_time()
            made = await make()
            if isinstance(made, ExecutionResult):
                return made
            stats.created += 1
            stats.sandboxes += 1
            stats.busy += 1
            held = False
            return PooledSandbox(made, born=born, lifetime_s=self.lifetime_s)
        finally:
            if held:
                self._slots.release()

    async def release(self, pooled: PooledSandbox, recycle: str | None) -> None:
        """Take ``pooled`` back after one attempt: idle again, or recycled for ``recycle``
        (one of :data:`RECYCLE_REASONS`; ``max_uses`` is decided here)."""
        stats = self.stats
        stats.busy -= 1
        stats.uses += 1
        pooled.uses += 1
        try:
            if recycle is None and pooled.uses >= self.max_uses:
                recycle = "max_uses"
            if recycle is None and not self._closed:
                self._idle.append(pooled)
                return
            await self._recycle(pooled, recycle)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Terminate the idle sandboxes (in the background, bounded); lend no more."""
        self._closed = True
        idle, self._idle = self._idle, []
        for pooled in idle:
            await self._recycle(pooled, None)

    async def _recycle(self, pooled: PooledSandbox, reason: str | None) -> None:
        self.stats.sandboxes -= 1
        if reason is not None:
            self.stats.recycled[reason] += 1
            logger.debug("modal pool: sandbox %s recycled (%s)", pooled.object_id, reason)
        with trio.move_on_after(self._retire_timeout_s, shield=True) as scope:
            try:
                await self._retire(pooled.sandbox)
            except Exception as exc:
                logger.warning(
                    "modal pool: could not hand sandbox %s over for termination (%s: %s); "
                    "the end-of-run sweep terminates it",
                    pooled.object_id,
                    type(exc).__name__,
                    exc,
                )
        if scope.cancelled_caught:
            logger.warning(
                "modal pool: handing sandbox %s over for termination took over %gs; "
                "the end-of-run sweep terminates it",
                pooled.object_id,
                self._retire_timeout_s,
            )
