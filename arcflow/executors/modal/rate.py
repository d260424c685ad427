"""The sandbox creation rate: a token bucket whose rate adapts to what Modal allows (AIMD).

:class:`CreationRate` paces creations (every producer calls :meth:`~CreationRate.acquire`
before it asks Modal for a sandbox) and moves its rate from what Modal answers:

* **slow start**: from the initial rate (a new account's), the rate doubles every
  ``interval`` seconds while creations succeed and the bucket, not the demand, is what
  holds them back;
* **multiplicative decrease**: RESOURCE_EXHAUSTED multiplies the rate by ``decrease``,
  or brings it down to the rate creations actually went through in the last second when
  that is lower (a slow start that overshot while the server's burst hid the limit comes
  back in one or two steps, not five); at most once per ``holdoff`` seconds, so the
  refusals of one burst count once; it ends the slow start; a retry-after hint holds
  every creation until it has passed;
* **additive increase**: afterwards, the rate grows by a twentieth of the rate at the
  last refusal per interval while creations succeed, back towards where Modal refused;
* never above ``ceiling`` (``--modal-creation-rate``) nor below ``floor``.

Waiters are served first come, first served, and each one's slot is computed when it
reaches the head of the line, so a rate raised while a thousand producers wait takes
effect at once (a reservation made at the old rate would not).  Time is
:func:`trio.current_time`, so tests run it on ``MockClock``.
"""

from __future__ import annotations

import collections
import math

import trio

__all__ = ["CreationRate"]

#: Fraction of the rate at the last refusal added per interval after the slow start.
_ADDITIVE_FRACTION = 0.05
#: Seconds over which the rate creations went through is measured.
_WINDOW_S = 1.0


class CreationRate:
    """At most ``rate`` acquisitions per second (``burst`` at once), the rate moved by AIMD."""

    def __init__(
        self,
        initial: float,
        *,
        ceiling: float = math.inf,
        floor: float = 0.2,
        burst: int = 1,
        interval: float = 0.5,
        decrease: float = 0.7,
        holdoff: float = 1.0,
    ) -> None:
        if not (0 < floor <= initial <= ceiling):
            raise ValueError(
                f"need 0 < floor <= initial <= ceiling, got {floor}, {initial}, {ceiling}"
            )
        if not (0 < decrease < 1):
            raise ValueError(f"decrease must be between 0 and 1, got {decrease}")
        self.rate = float(initial)
        self.ceiling = float(ceiling)
        self._base_ceiling = float(ceiling)
        #: The part of the configured limits this process takes (a shared run's worker: 1/N).
        self.share = 1.0
        self.floor = float(floor)
        self.burst = burst
        self.interval = interval
        self.decrease = decrease
        self.holdoff = holdoff
        #: Creations that went through, and refusals seen.
        self.successes = 0
        self.refusals = 0
        #: Rate changes: increases and decreases.
        self.increases = 0
        self.decreases = 0
        #: True until the first refusal: the rate doubles instead of growing additively.
        self.slow_start = True
        #: Rate at the last refusal (the additive step is a fraction of it).
        self.refused_at_rate: float | None = None
        self._tat = -math.inf  # GCRA's theoretical arrival time of the next acquisition
        self._hold_until = -math.inf
        self._line = trio.Lock()  # fair: first come, first served
        self._changed = trio.Event()
        self._last_increase = -math.inf
        self._last_decrease = -math.inf
        self._paced = False  # a waiter had to wait since the last increase (demand >= rate)
        self._recent: collections.deque[float] = collections.deque()  # successes, last second

    # -- pacing -------------------------------------------------------------------------

    def _allowed_at(self, now: float) -> float:
        interval = 1.0 / self.rate
        tat = max(self._tat, now)
        return max(tat - (self.burst - 1) * interval, self._hold_until)

    async def acquire(self) -> None:
        """Wait for the next creation slot and take it.  Always a checkpoint.

        Cancelled while waiting, nothing is taken.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        async with self._line:
            while True:
                now = trio.current_time()
                allowed = self._allowed_at(now)
                if allowed <= now:
                    self._tat = max(self._tat, now) + 1.0 / self.rate
                    return
                self._paced = True
                changed = self._changed
                with trio.move_on_at(allowed):
                    await changed.wait()

    def _wake(self) -> None:
        """The rate or the hold changed: the head of the line recomputes its slot."""
        self._changed.set()
        self._changed = trio.Event()

    # -- feedback -----------------------------------------------------------------------

    def succeeded(self) -> None:
        """A creation went through: maybe raise the rate (slow start, then additive)."""
        self.successes += 1
        now = trio.current_time()
        recent = self._recent
        recent.append(now)
        while recent[0] < now - _WINDOW_S:
            recent.popleft()
        if not self._paced or now - self._last_increase < self.interval:
            return
        if now - self._last_decrease < self.holdoff:
            return
        if self.slow_start:
            rate = self.rate * 2
        else:
            reference = self.refused_at_rate or self.rate
            rate = self.rate + max(_ADDITIVE_FRACTION * reference, 0.1)
        rate = min(rate, self.ceiling)
        self._last_increase = now
        self._paced = False
        if rate > self.rate:
            self.rate = rate
            self.increases += 1
            self._wake()

    def refused(self, retry_after: float | None = None) -> None:
        """Modal refused a creation (RESOURCE_EXHAUSTED): lower the rate, honour the hint."""
        self.refusals += 1
        now = trio.current_time()
        woke = False
        if retry_after is not None and retry_after > 0:
            self._hold_until = max(self._hold_until, now + retry_after)
            woke = True
        if now - self._last_decrease >= self.holdoff:
            self.refused_at_rate = self.rate
            rate = self.rate * self.decrease
            admitted = self.admitted_rate(now)
            if admitted > 0:
                rate = min(rate, admitted)
            self.rate = max(self.floor, rate)
            self.slow_start = False
            self.decreases += 1
            self._last_decrease = now
            # Slots were spaced at the old rate from the last one taken: keep that spacing for
            # the one in progress, the next ones follow the new rate.
            woke = True
        if woke:
            self._wake()

    def set_share(self, share: float) -> None:
        """Take ``share`` (0-1] of the configured ceiling and of the rate (a fleet's worker).

        The ceiling becomes ``share`` of the one given at construction; the rate is
        scaled by the change of share (one worker of two that becomes one of four
        halves its rate), so a fleet's workers together keep to what one process
        would.  The slow start and AIMD go on from there.
        """
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if share == self.share:
            return
        scale = share / self.share
        self.share = share
        self.ceiling = self._base_ceiling * share
        self.rate = min(self.ceiling, max(self.floor, self.rate * scale))
        self._wake()

    def admitted_rate(self, now: float | None = None) -> float:
        """Creations per second that went through over the last second."""
        now = trio.current_time() if now is None else now
        return sum(1 for t in self._recent if t >= now - _WINDOW_S) / _WINDOW_S

    def __repr__(self) -> str:
        phase = "slow start" if self.slow_start else "additive"
        return f"<CreationRate {self.rate:.3g}/s ({phase}) ceiling={self.ceiling:g}>"
