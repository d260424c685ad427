"""``FifoSlots``: a counting semaphore for asyncio that serves waiters in order and can fail them.

The asyncio bridge (:mod:`arcflow.aio`) takes one slot per hand-over and
gives it back when the runtime has accepted the item, so that a stalled
database makes ``submit()`` wait (in arrival order) and ``submit_nowait()``
refuse.  ``asyncio.Semaphore`` has neither a refusing acquire nor a way to
fail its waiters when the runtime stops; this has both.  Used from one event
loop thread.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["FifoSlots"]


class FifoSlots:
    """``size`` slots; :meth:`acquire` waits in FIFO order, :meth:`try_acquire` never waits."""

    def __init__(self, size: int) -> None:
        self.size = size
        #: Slots taken and not yet released.
        self.taken = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one; False otherwise."""
        if self.taken >= self.size or self._waiters:
            return False
        self.taken += 1
        return True

    async def acquire(self) -> None:
        """Take a slot, waiting behind earlier waiters; raises what :meth:`fail_waiters` was given."""
        if self.try_acquire():
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot
        except BaseException:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self.release(1)  # granted, but this task will not use it
            else:
                try:
                    self._waiters.remove(slot)
                except ValueError:
                    pass
            raise

    def release(self, count: int = 1) -> None:
        """Give back ``count`` slots and hand them to the longest waiters."""
        self.taken -= count
        while self._waiters and self.taken < self.size:
            slot = self._waiters.popleft()
            if slot.done():
                continue
            self.taken += 1
            slot.set_result(None)

    def fail_waiters(self, exc: BaseException) -> None:
        """Wake every waiter with ``exc`` (the runtime stopped)."""
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_exception(exc)
