"""The supervisor: restarts with backoff, restart intensity, state kept across restarts."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from arcflow.config import SupervisorConfig
from arcflow.errors import RestartIntensityExceeded
from arcflow.supervisor import supervise


async def test_restarts_a_crashed_actor(autojump_clock: trio.testing.MockClock) -> None:
    """An actor that crashes twice then returns is run three times and the supervisor returns."""
    calls: list[float] = []

    async def actor() -> None:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise RuntimeError("boom")

    restarts: Counter[str] = Counter()
    cfg = SupervisorConfig(max_restarts=5, period=60, backoff_base=1, backoff_max=10)
    await supervise("w", actor, config=cfg, restarts=restarts)
    assert len(calls) == 3
    assert restarts["w"] == 2
    # backoff doubles: 1 s, then 2 s
    assert calls[1] - calls[0] == pytest.approx(1)
    assert calls[2] - calls[1] == pytest.approx(2)


async def test_intensity_exceeded_names_actor_and_cause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """More than max_restarts crashes within period raises RestartIntensityExceeded with the cause."""

    async def actor() -> None:
        raise ValueError("always broken")

    cfg = SupervisorConfig(max_restarts=2, period=60, backoff_base=0.1)
    with pytest.raises(RestartIntensityExceeded) as info:
        await supervise("writer", actor, config=cfg)
    assert info.value.actor == "writer"
    assert isinstance(info.value.__cause__, ValueError)
    assert "always broken" in str(info.value)


async def test_old_crashes_leave_the_window(autojump_clock: trio.testing.MockClock) -> None:
    """Crashes spread wider than the period never exceed the intensity."""
    crashes = 0

    async def actor() -> None:
        nonlocal crashes
        crashes += 1
        if crashes <= 6:
            await trio.sleep(30)
            raise RuntimeError("rare")

    cfg = SupervisorConfig(max_restarts=1, period=20, backoff_base=0.1)
    await supervise("p", actor, config=cfg)
    assert crashes == 7


async def test_cancellation_is_not_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    """Cancelling a supervised actor ends it without a restart."""
    runs = 0

    async def actor() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep_forever()

    restarts: Counter[str] = Counter()
    with trio.move_on_after(5):
        await supervise("x", actor, restarts=restarts)
    assert runs == 1
    assert not restarts
