"""The writer's circuit breaker: closed -> open -> half-open -> closed.

* **closed**: writes go through; ``failure_threshold`` consecutive
  infrastructure failures open it.
* **open**: no write is attempted (batches spill to the journal) until
  ``cooldown`` seconds have passed.
* **half_open**: one probe write is allowed; success closes the breaker,
  failure opens it again for another cool-down.

Only infrastructure (transient) failures are recorded; data errors and poison
records never reach it.  Time is ``trio.current_time()``, so tests run it on
``MockClock``.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable

import trio

from .config import BreakerConfig

log = logging.getLogger("arcflow.breaker")


class BreakerState(enum.StrEnum):
    """The breaker's three states; the value is what statistics and logs show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


class CircuitBreaker:
    """Decides whether the writer may talk to the database right now.

    Reading :attr:`state` never changes anything (a metrics scrape or a
    progress frame cannot move the breaker); transitions happen only inside
    :meth:`allow` and the ``record_*`` methods, and each is logged once, with
    ``name`` (the run) in the message, and counted in :attr:`transitions`.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        name: str = "",
        on_transition: Callable[[BreakerState, BreakerState, str], None] | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config or BreakerConfig()
        self.name = name
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self._on_transition = on_transition
        self._clock = clock
        #: Transitions so far, keyed ``"closed->open"`` and so on.
        self.transitions: Counter[str] = Counter()

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its cool-down reads ``half_open``.

        A pure read: the move to half-open is made by the next :meth:`allow`
        or ``record_*`` call.
        """
        if self._state is BreakerState.OPEN and self._clock() >= self.reopen_at:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def reopen_at(self) -> float:
        """Clock time at which an open breaker lets a probe through."""
        return self._opened_at + self.config.cooldown

    def _advance(self) -> BreakerState:
        """Make an elapsed cool-down a real transition to half-open; the state now."""
        state = self.state
        if state is not self._state:
            self._move(state, f"cool-down of {self.config.cooldown:g}s elapsed")
        return state

    def allow(self) -> bool:
        """May a write be attempted now?  In half-open, only one probe at a time."""
        state = self._advance()
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """A write succeeded: reset the failure count; a probe's success closes the breaker."""
        self._advance()
        self._failures = 0
        self._probing = False
        if self._state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, "probe write succeeded")

    def record_failure(self, reason: str = "infrastructure failure") -> None:
        """An infrastructure failure: may open (or re-open) the breaker."""
        state = self._advance()
        self._failures += 1
        self._probing = False
        if state is BreakerState.HALF_OPEN:
            self._open(f"probe failed: {reason}")
        elif state is BreakerState.CLOSED and self._failures >= self.config.failure_threshold:
            self._open(f"{self._failures} consecutive failures, last: {reason}")

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let another one through later."""
        self._probing = False

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN, reason)

    def _move(self, new: BreakerState, reason: str) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        self.transitions[f"{old}->{new}"] += 1
        prefix = f"{self.name}: " if self.name else ""
        log.warning("%scircuit breaker %s -> %s (%s)", prefix, old, new, reason)
        if self._on_transition is not None:
            self._on_transition(old, new, reason)
