"""Embedding arcflow in a trio program: :func:`open_runtime`.

::

    async with arcflow.open_runtime(db=DSN, batch_size=500, flush_interval=5) as rt:
        await rt.record(outcome)                 # durable, batched writer only
    # leaving the block drains: every accepted outcome is written (or spilled)

``open_runtime(...)`` takes exactly the arguments of :class:`arcflow.Runtime`
and returns one; it exists so that trio and asyncio hosts read alike
(:func:`arcflow.aio.open_runtime` is the asyncio twin).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec

from ._trio_asyncio import import_trio_asyncio
from .runtime import Runtime

__all__ = ["open_runtime"]

P = ParamSpec("P")


def _opener(cls: Callable[P, Runtime]) -> Callable[P, Runtime]:
    def open_runtime(*args: P.args, **kwargs: P.kwargs) -> Runtime:
        """A new :class:`arcflow.Runtime`, to use as ``async with open_runtime(...) as rt``.

        The arguments are those of :class:`arcflow.Runtime`: ``executor``
        (omit it to only ``record()`` finished outcomes), ``db`` (a DSN; None
        means ``ARCFLOW_DB``, the ``PG*`` variables, then the embedded server),
        ``run_id``, hooks, and any :class:`arcflow.RuntimeConfig` field as a
        keyword (``batch_size=500``, ``flush_interval=5``, ``data_dir=...``).

        Inside the block: ``await rt.submit(scenario)`` / ``await rt.record(outcome)``
        wait while the pipeline is full; their ``_nowait`` twins raise instead.
        Leaving the block (normally, by an exception, or because the host's
        scope was cancelled) drains the pipeline under a shield, within
        ``shutdown_timeout`` when cancelled: every accepted outcome ends up in
        PostgreSQL or in the run's spill journal.
        """
        import_trio_asyncio()  # now, keeping the program's asyncio.new_event_loop as it is
        return cls(*args, **kwargs)

    open_runtime.__qualname__ = "open_runtime"
    open_runtime.__module__ = __name__
    return open_runtime


open_runtime = _opener(Runtime)
