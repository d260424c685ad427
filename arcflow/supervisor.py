"""Supervised restarts, as in OTP: restart a crashed actor, within a restart intensity.

An actor that raises an ``Exception`` is restarted after a backoff
(``backoff_base * 2**(n-1)`` before the n-th restart in the window, capped at
``backoff_max``; see :meth:`SupervisorConfig.backoff`).  More than
``max_restarts`` crashes within ``period`` seconds means something is
systematically wrong: :class:`RestartIntensityExceeded` is raised, naming the
actor and its last error, and the runtime fails loudly.  Cancellation is not a
crash and passes through.

State that must survive a crash (the writer's in-flight batch, a producer's
current scenario) lives outside the actor and is passed in again on restart;
channels are owned here, not by the actor, so a crash never closes them.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .config import SupervisorConfig
from .errors import RestartIntensityExceeded

log = logging.getLogger("arcflow.supervisor")


async def supervise(
    name: str,
    actor: Callable[..., Awaitable[Any]],
    *args: Any,
    config: SupervisorConfig | None = None,
    restarts: Counter[str] | None = None,
) -> None:
    """Run ``await actor(*args)`` until it returns, restarting it when it crashes.

    ``restarts`` (optional) counts restarts by actor name.

    Retries: any ``Exception`` from the actor, with backoff, within the intensity.
    Escalates: :class:`RestartIntensityExceeded` (chained to the last crash).
    Closes: nothing; the caller owns the channels in ``args``.
    """
    config = config or SupervisorConfig()
    backoff = config.backoff()
    crashes: deque[float] = deque()
    while True:
        try:
            await actor(*args)
            return
        except Exception as exc:
            now = trio.current_time()
            crashes.append(now)
            while crashes and crashes[0] < now - config.period:
                crashes.popleft()
            if len(crashes) > config.max_restarts:
                log.error("actor %s crashed past its restart intensity: %r", name, exc)
                raise RestartIntensityExceeded(name, len(crashes), config.period, exc) from exc
            if restarts is not None:
                restarts[name] += 1
            delay = backoff.delay(len(crashes))
            log.error(
                "actor %s crashed (%s: %s); restart %d of at most %d per %gs in %.2fs",
                name,
                type(exc).__name__,
                exc,
                len(crashes),
                config.max_restarts,
                config.period,
                delay,
                exc_info=exc,
            )
            await trio.sleep(delay)
