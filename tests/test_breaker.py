"""The circuit breaker, checked against a reference model by a hypothesis state machine."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from arcflow.breaker import BreakerState, CircuitBreaker
from arcflow.config import BreakerConfig


class Model:
    """The simplest statement of the breaker's contract."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self.state, self.failures, self.opened_at, self.probing = "closed", 0, 0.0, False

    def tick(self, now: float) -> None:
        if self.state == "open" and now >= self.opened_at + self.cooldown:
            self.state = "half_open"

    def allow(self, now: float) -> bool:
        self.tick(now)
        if self.state == "closed":
            return True
        if self.state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.probing, self.state = 0, False, "closed"

    def failure(self, now: float) -> None:
        self.failures += 1
        self.probing = False
        if self.state == "half_open" or (
            self.state == "closed" and self.failures >= self.threshold
        ):
            self.state, self.opened_at = "open", now


class BreakerMachine(RuleBasedStateMachine):
    """Random sequences of time passing, requests, successes and failures."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = trio.testing.MockClock()
        self.now = 0.0
        self.transitions: list[tuple[str, str]] = []
        cfg = BreakerConfig(failure_threshold=3, cooldown=10.0)
        self.breaker = CircuitBreaker(
            cfg,
            clock=lambda: self.now,
            on_transition=lambda old, new, _why: self.transitions.append((old.value, new.value)),
        )
        self.model = Model(3, 10.0)

    @rule(dt=st.floats(min_value=0, max_value=15, allow_nan=False))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule()
    def request(self) -> None:
        assert self.breaker.allow() == self.model.allow(self.now)

    @rule()
    def success(self) -> None:
        self.breaker.record_success()
        self.model.success()

    @rule()
    def failure(self) -> None:
        self.breaker.record_failure("test")
        self.model.failure(self.now)

    @invariant()
    def same_state(self) -> None:
        self.model.tick(self.now)
        assert self.breaker.state.value == self.model.state

    @invariant()
    def transitions_are_legal(self) -> None:
        legal = {
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
            ("half_open", "open"),
            ("open", "closed"),
        }
        assert set(self.transitions) <= legal


TestBreakerAgainstModel = BreakerMachine.TestCase
TestBreakerAgainstModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


async def test_breaker_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    """Opens after the threshold, probes once after the cool-down on trio's clock, closes on success."""
    seen: list[str] = []
    b = CircuitBreaker(
        BreakerConfig(failure_threshold=2, cooldown=5),
        on_transition=lambda old, new, why: seen.append(f"{old}->{new}"),
    )
    b.record_failure("x")
    assert b.state is BreakerState.CLOSED
    b.record_failure("x")
    assert b.state is BreakerState.OPEN and not b.allow()
    await trio.sleep(4.9)
    assert not b.allow()
    await trio.sleep(0.2)
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.record_success()
    assert b.state is BreakerState.CLOSED
    assert seen == ["closed->open", "open->half_open", "half_open->closed"]


def test_reading_the_state_changes_nothing(caplog: Any) -> None:
    """state is a pure read: past the cool-down it reads half_open, but only allow() moves it, logged once."""
    now = [0.0]
    b = CircuitBreaker(
        BreakerConfig(failure_threshold=1, cooldown=5), name="run r1", clock=lambda: now[0]
    )
    b.record_failure("down")
    now[0] = 6.0
    with caplog.at_level("WARNING", logger="arcflow.breaker"):
        caplog.clear()
        for _ in range(3):
            assert b.state is BreakerState.HALF_OPEN
        assert b.transitions == {"closed->open": 1}
        assert caplog.records == []
        assert b.allow()
    assert b.transitions == {"closed->open": 1, "open->half_open": 1}
    assert [r.getMessage() for r in caplog.records] == [
        "run r1: circuit breaker open -> half_open (cool-down of 5s elapsed)"
    ]
