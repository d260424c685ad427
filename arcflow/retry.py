"""The one retry primitive: exponential backoff, full jitter, bounded in tries and time.

Every retry loop in arcflow (a batch write, a dead-letter write, a supervised
restart, a sandbox creation, a scenario's next attempt) draws its delays
from a :class:`Backoff`::

    tries = backoff.start(rng=rng)           # one loop's budget, from now
    while True:
        try:
            return await do_it()
        except TransientError:
            delay = tries.next_delay()       # None: out of tries or out of time
            if delay is None:
                raise
            await trio.sleep(delay)

The delay before retry *n* (1-based) is ``min(cap, base * 2**(n-1))``, or,
with ``jitter`` (the default), uniform in ``[0, that]`` ("full jitter", which
spreads clients that failed together).  The random source is injectable, so
tests are deterministic; time is ``trio.current_time()``, so they run on
``MockClock``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs
import trio

from .validators import non_negative, optional, positive, whole

__all__ = ["Backoff", "Tries"]


@attrs.frozen(kw_only=True)
class Backoff:
    """How long to wait before each retry, and when to stop retrying."""

    #: Delay ceiling of the first retry, in seconds (0 retries at once).
    base: float = attrs.field(default=1.0, validator=non_negative)
    #: No delay is longer than this many seconds.
    cap: float = attrs.field(default=30.0, validator=positive)
    #: Retries after the first try; None: no limit on their number.
    max_retries: int | None = attrs.field(default=None, validator=optional(whole(0)))
    #: Stop retrying once this many seconds have passed since the first try; None: no limit.
    max_elapsed: float | None = attrs.field(default=None, validator=optional(positive))
    #: Full jitter (uniform below the ceiling); False: always the ceiling itself.
    jitter: bool = True

    def ceiling(self, retry: int) -> float:
        """The longest delay before retry number ``retry`` (1-based)."""
        if retry < 1:
            return 0.0
        # 2**1100 overflows a float: past the cap long before that.
        exponent = min(retry - 1, 1000)
        return min(self.cap, self.base * math.ldexp(1.0, exponent))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The delay before retry number ``retry``: jittered below the ceiling, or the ceiling."""
        ceiling = self.ceiling(retry)
        if not self.jitter or ceiling == 0.0:
            return ceiling
        return (rng or _shared_rng).uniform(0.0, ceiling)

    def start(
        self,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> Tries:
        """The budget of one retry loop, starting now."""
        return Tries(self, rng or _shared_rng, clock, clock())


class Tries:
    """One retry loop in progress: how many retries were taken, and since when."""

    __slots__ = ("_clock", "_rng", "backoff", "retries", "started")

    def __init__(
        self, backoff: Backoff, rng: random.Random, clock: Callable[[], float], started: float
    ) -> None:
        self.backoff = backoff
        self._rng = rng
        self._clock = clock
        self.started = started
        #: Retries taken so far (delays handed out).
        self.retries = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the first try."""
        return self._clock() - self.started

    def next_delay(self) -> float | None:
        """The delay before the next retry, or None when the budget is spent.

        Counts the retry.  With ``max_elapsed``, a delay never runs past it.
        """
        b = self.backoff
        if b.max_retries is not None and self.retries >= b.max_retries:
            return None
        remaining = math.inf
        if b.max_elapsed is not None:
            remaining = b.max_elapsed - self.elapsed
            if remaining <= 0:
                return None
        self.retries += 1
        return min(b.delay(self.retries, self._rng), remaining)


#: The random source of backoffs whose caller gave none.
_shared_rng = random.Random()
