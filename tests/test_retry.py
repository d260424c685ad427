"""The retry primitive: exponential ceilings, full jitter, and budgets in retries and time."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from arcflow.config import RetryPolicy, RuntimeConfig, SupervisorConfig
from arcflow.errors import ConfigError
from arcflow.retry import Backoff


def test_ceilings_double_up_to_the_cap() -> None:
    """The ceiling before retry n is base * 2**(n-1), never above the cap."""
    b = Backoff(base=1.0, cap=10.0)
    assert [b.ceiling(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.ceiling(10_000) == 10.0  # no overflow far past the cap


@given(
    base=st.floats(0, 100),
    cap=st.floats(0.001, 1000),
    retry=st.integers(1, 5000),
    seed=st.integers(),
)
def test_jittered_delays_stay_below_their_ceiling(
    base: float, cap: float, retry: int, seed: int
) -> None:
    """A jittered delay is in [0, ceiling]; without jitter it is the ceiling."""
    b = Backoff(base=base, cap=cap)
    delay = b.delay(retry, random.Random(seed))
    assert 0.0 <= delay <= b.ceiling(retry) <= cap
    assert Backoff(base=base, cap=cap, jitter=False).delay(retry) == b.ceiling(retry)


def test_the_random_source_is_injectable() -> None:
    """Two loops seeded alike draw the same delays."""
    b = Backoff(base=1.0, cap=30.0, max_retries=5)
    first = b.start(rng=random.Random(7), clock=lambda: 0.0)
    second = b.start(rng=random.Random(7), clock=lambda: 0.0)
    assert [first.next_delay() for _ in range(5)] == [second.next_delay() for _ in range(5)]


def test_max_retries_bounds_the_loop() -> None:
    """After max_retries delays, next_delay() says stop (None), and retries counts them."""
    tries = Backoff(base=0.5, max_retries=3, jitter=False).start(clock=lambda: 0.0)
    assert [tries.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, None, None]
    assert tries.retries == 3


async def test_max_elapsed_bounds_the_loop_and_trims_the_last_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No delay runs past max_elapsed; once it has passed, next_delay() says stop."""
    tries = Backoff(base=4.0, cap=100.0, max_elapsed=10.0, jitter=False).start()
    assert tries.next_delay() == 4.0
    await trio.sleep(4.0)
    assert tries.next_delay() == 6.0  # 8 s trimmed to the 6 s left
    await trio.sleep(6.0)
    assert tries.next_delay() is None


def test_config_classes_produce_their_backoffs() -> None:
    """RetryPolicy, SupervisorConfig and RuntimeConfig hand out Backoffs with their own numbers."""
    writer = RetryPolicy(max_retries=2, base_delay=0.5, max_delay=4, max_elapsed=9).backoff()
    assert (writer.base, writer.cap, writer.max_retries, writer.max_elapsed, writer.jitter) == (
        0.5,
        4,
        2,
        9,
        True,
    )
    restarts = SupervisorConfig(backoff_base=1, backoff_max=10).backoff()
    assert [restarts.delay(n) for n in (1, 2, 5)] == [1, 2, 10]
    attempts = RuntimeConfig(attempt_backoff=2, attempt_backoff_max=5).attempt_backoff_policy()
    assert [attempts.delay(n) for n in (1, 2, 3)] == [2, 4, 5]


def test_invalid_backoffs_are_refused() -> None:
    """A negative base or a cap of 0 is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match="invalid base=-1"):
        Backoff(base=-1)
    with pytest.raises(ConfigError, match="invalid cap=0"):
        Backoff(cap=0)
