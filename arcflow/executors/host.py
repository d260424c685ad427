"""``HostExecutor``: scenarios as coroutines on an asyncio host's own event loop.

For :class:`arcflow.aio.AsyncioRuntime`, whose runtime runs in a thread of its
own: each attempt is handed to the host loop with
``asyncio.run_coroutine_threadsafe`` and awaited from trio, so the function
may use the host's own asyncio clients (its asyncpg pool, its HTTP session).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.lowlevel

from ..errors import ConfigError
from ..models import ExecutionResult, Scenario
from .base import ExecutionContext, Executor, result_from_mapping

__all__ = ["HostExecutor"]


class HostExecutor(Executor):
    """Runs scenarios as ``await function(scenario)`` on the asyncio host's event loop.

    For :class:`AsyncioRuntime`: the function may use the host's own asyncio
    clients (its asyncpg pool, its HTTP session).  It returns what a
    ``python:`` function returns (None, or a mapping with ``status``,
    ``score``, ``output``); an exception becomes an ``error`` outcome; a
    timeout or a cancelled run cancels the host task.
    """

    kind = "asyncio"

    def __init__(
        self, function: Callable[[Scenario], Awaitable[Any]], name: str | None = None
    ) -> None:
        self.function = function
        self.name = name or getattr(function, "__qualname__", repr(function))
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (AsyncioRuntime binds its host loop when it starts)."""
        self._loop = loop

    async def start(self) -> None:
        if self._loop is None:
            raise ConfigError(
                "HostExecutor has no host loop: use it with arcflow.aio.AsyncioRuntime "
                "(or call bind(loop) first)"
            )

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "function": self.name}

    async def _call(self, scenario: Scenario) -> Any:
        return await self.function(scenario)

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        if self._loop is None:
            raise ConfigError("HostExecutor is not bound to a host loop")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[Any]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:  # pragma: no cover - the run outlives its scenarios
                pass

        future = asyncio.run_coroutine_threadsafe(self._call(scenario), self._loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # cancels the host task; wait (bounded) until it has really ended
            with trio.move_on_after(10, shield=True):
                await done.wait()
            raise
        value = future.result()  # an exception here becomes an ``error`` outcome
        return result_from_mapping(value, executor=self.describe())
