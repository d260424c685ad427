"""``python:MODULE:FUNCTION`` — an importable callable run in process.

Async callables are awaited in the producer's task; sync ones run in a worker
thread (abandoned, not killed, when the attempt times out or is cancelled:
Python cannot kill a thread, so a sync function past its timeout keeps its
thread until it returns, but its result is discarded).

Sync functions have a thread limiter of their own, not trio's default of 40
threads: by default as many threads as scenarios run at once
(``--concurrency``), or ``threads`` (``--threads``) if that is smaller, say
for a function that is not thread-safe beyond a few callers.

The worker thread runs the function in a copy of the caller's context (the
log context and other ``contextvars`` are seen there), through
:func:`arcflow.executors._handoff.run_in_thread`, which costs much less per
call than ``trio.to_thread.run_sync``; a function that calls back into trio
with ``trio.from_thread`` must pass ``trio_token`` explicitly.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import trio

from ..errors import ExecutorSpecError
from ..models import ExecutionResult, Scenario, Status
from ._handoff import run_in_thread
from .base import ExecutionContext, Executor, result_from_mapping


class PythonExecutor(Executor):
    """Calls ``function(scenario)``; the return value maps to a result."""

    kind = "python"

    def __init__(
        self,
        function: Callable[[Scenario], Any],
        name: str | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ExecutorSpecError(f"invalid threads={threads!r}: must be a whole number >= 1")
        self.function = function
        self.name = name or getattr(function, "__qualname__", repr(function))
        #: Worker threads sync calls may use at once (None: one per running scenario).
        self.threads = threads
        self._limiter = trio.CapacityLimiter(threads if threads is not None else math.inf)
        #: The limiter sync calls take (none when unlimited: the runtime bounds the calls).
        self._thread_limiter = self._limiter if threads is not None else None
        self._passed: ExecutionResult | None = None
        target = function.func if isinstance(function, functools.partial) else function
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
        )

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> PythonExecutor:
        """Import ``MODULE:FUNCTION`` (the working directory is importable).

        ``options`` are the constructor's keyword arguments.
        """
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ExecutorSpecError(
                f"invalid python executor 'python:{spec}': expected python:MODULE:FUNCTION, "
                "for example python:examples.quickstart:score"
            )
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ExecutorSpecError(
                f"cannot import module {module_name!r} for executor 'python:{spec}': "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        target: Any = module
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ExecutorSpecError(
                    f"module {module_name!r} has no attribute {attr!r} (executor 'python:{spec}')"
                ) from None
        if not callable(target):
            raise ExecutorSpecError(
                f"'python:{spec}' names {type(target).__name__}, not a callable"
            )
        return cls(target, **{"name": spec, **options})

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        try:
            if self.is_async:
                value = await self.function(scenario)
            else:
                value = await run_in_thread(self.function, scenario, limiter=self._thread_limiter)
        except Exception as exc:
            return ExecutionResult(
                status=Status.ERROR,
                error_type=type(exc).__name__,
                error_message=str(exc) or repr(exc),
                executor={"kind": self.kind, "function": self.name},
            )
        if value is None:
            # The common "passed, nothing to report" result is immutable: share one.
            passed = self._passed
            if passed is None:
                passed = self._passed = ExecutionResult(
                    status=Status.PASSED, executor={"kind": self.kind, "function": self.name}
                )
            return passed
        return result_from_mapping(value, executor={"kind": self.kind, "function": self.name})

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "function": self.name}
