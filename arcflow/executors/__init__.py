"""Executors: where scenarios run.  Given a scenario, produce a result.

======================  =====================================================
``base``                the protocol: :class:`Executor`, :class:`ExecutionContext`,
                        :func:`result_from_mapping`
``python``              ``python:MODULE:FUNCTION``, a callable in process
``process``             ``process:COMMAND ARGS``, a subprocess per scenario
``modal``               ``modal:COMMAND ARGS``, a Modal Sandbox per scenario (or a warm pool)
``modal_fn``            ``modal-fn:APP/FUNCTION``, a deployed Modal Function called per scenario
``host``                :class:`HostExecutor`, coroutines on an asyncio host's loop
``output``              the command contract shared by ``process`` and ``modal``
``ratelimit``           :class:`RateLimiter`, a token bucket on trio's clock
======================  =====================================================

:func:`parse_executor` is the registry: it turns ``KIND:REST`` into an
executor by calling that kind's ``from_spec(rest, **options)``, and accepts an
:class:`Executor` or a plain callable (wrapped in :class:`PythonExecutor`)
wherever a spec is accepted.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..errors import ExecutorSpecError
from .base import ExecutionContext, Executor, result_from_mapping
from .python import PythonExecutor

__all__ = [
    "KINDS",
    "ExecutionContext",
    "Executor",
    "PythonExecutor",
    "parse_executor",
    "result_from_mapping",
]

#: Executor kinds by spec prefix: (module, class).  Each class has ``from_spec(rest, **options)``.
KINDS: dict[str, tuple[str, str]] = {
    "python": ("arcflow.executors.python", "PythonExecutor"),
    "process": ("arcflow.executors.process", "ProcessExecutor"),
    "modal": ("arcflow.executors.modal", "ModalExecutor"),
    "modal-fn": ("arcflow.executors.modal_fn", "ModalFnExecutor"),
}

_EXPECTED = (
    "an Executor, a plain callable (run as PythonExecutor(fn)), or a spec string: "
    "'python:MODULE:FUNCTION', 'process:COMMAND ARGS', 'modal:COMMAND ARGS' or "
    "'modal-fn:APP/FUNCTION'"
)


def parse_executor(spec: str | Executor | Callable[..., Any], **options: Any) -> Executor:
    """The executor ``spec`` names.

    ``spec`` is an :class:`Executor` (returned as it is), a callable taking a
    :class:`arcflow.Scenario` (wrapped in :class:`PythonExecutor`), or a
    string ``KIND:REST`` (``python:mod:fn``, ``process:cmd args``,
    ``modal:cmd args``, ``modal-fn:app/function``), built by that kind's
    ``from_spec(REST, **options)``.
    Raises :class:`arcflow.ExecutorSpecError` saying what would be valid.
    """
    if isinstance(spec, Executor):
        if options:
            raise ExecutorSpecError(
                f"executor options {sorted(options)} apply to a spec string, not to an "
                f"{type(spec).__name__} instance: pass them to its constructor"
            )
        return spec
    if isinstance(spec, str):
        kind, sep, rest = spec.partition(":")
        if not sep:
            raise ExecutorSpecError(f"invalid executor {spec!r}: expected {_EXPECTED}")
        if kind not in KINDS:
            raise ExecutorSpecError(
                f"unknown executor kind {kind!r} in {spec!r}: use "
                + ", ".join(f"{k}:" for k in KINDS)
            )
        module_name, class_name = KINDS[kind]
        cls = getattr(importlib.import_module(module_name), class_name)
        executor: Executor = cls.from_spec(rest, **options)
        return executor
    if callable(spec):
        return PythonExecutor(spec, **options)
    raise ExecutorSpecError(
        f"invalid executor {spec!r} ({type(spec).__name__}): expected {_EXPECTED}"
    )
