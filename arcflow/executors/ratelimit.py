"""Rate limiting on trio's clock, shared by every task that holds the limiter.

:class:`RateLimiter` is a token bucket written as GCRA (generic cell rate
algorithm): each :meth:`~RateLimiter.acquire` reserves the next free slot, so
waiters are served in arrival order and no burst ever exceeds ``burst``.  It
reads :func:`trio.current_time`, so tests drive it with ``autojump_clock``.
"""

from __future__ import annotations

import math

import trio


class RateLimiter:
    """At most ``rate`` acquisitions per second, and at most ``burst`` at once.

    Over any window of ``W`` seconds, at most ``burst + rate * W`` calls to
    :meth:`acquire` return.  With ``burst=1`` consecutive acquisitions are at
    least ``1 / rate`` seconds apart.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(
                f"rate must be a positive number of acquisitions per second, got {rate!r}"
            )
        if not (isinstance(burst, int) and burst >= 1):
            raise ValueError(f"burst must be an integer >= 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._interval = 1.0 / self.rate
        # Theoretical arrival time of the next acquisition (GCRA's "TAT").
        self._tat = -math.inf

    async def acquire(self) -> None:
        """Wait until a slot is free, then take it.  Always a checkpoint.

        Cancelled while waiting, the slot is given back when no later caller
        reserved a slot after it (otherwise it stays unused: never over the rate).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        tat = max(self._tat, now)
        allowed_at = tat - (self.burst - 1) * self._interval
        reserved_tat = tat + self._interval
        self._tat = reserved_tat
        if allowed_at <= now:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        try:
            await trio.sleep_until(allowed_at)
        except BaseException:
            if self._tat == reserved_tat:
                self._tat = tat
            raise

    def __repr__(self) -> str:
        return f"<RateLimiter {self.rate:g}/s burst={self.burst}>"
