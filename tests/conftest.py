"""Shared fixtures: a real PostgreSQL for the whole session, and helpers to read it back.

The database is a throwaway server started from the embedded package's
binaries (``arcflow.testing.TemporaryPostgres``), or ``ARCFLOW_TEST_DB`` if
set.  Under ``CI=true`` a database that cannot be started fails the tests;
elsewhere those tests are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import asyncpg
import pytest
import trio
import trio_asyncio

from arcflow.errors import primary_error
from arcflow.testing import TemporaryPostgres

# The session database, and the CI-fails-instead-of-skipping rule, come from the
# plugin that users of arcflow.testing get too.
pytest_plugins = ["arcflow.pytest_plugin"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def import_or_skip(name: str) -> Any:
    """``pytest.importorskip``, except under CI=true, where the dev extra installs every
    optional dependency: there a missing one fails the module instead of skipping it."""
    if IN_CI:
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(name)


@pytest.fixture(scope="session")
def pg_server(arcflow_postgres: TemporaryPostgres | None) -> TemporaryPostgres | None:
    """The session's PostgreSQL server (None when ARCFLOW_TEST_DB points elsewhere)."""
    return arcflow_postgres


@pytest.fixture(scope="session")
def dsn(arcflow_dsn: str) -> str:
    """DSN of the session's real PostgreSQL."""
    return arcflow_dsn


@pytest.fixture
def run_id() -> str:
    """A run id unique to the test."""
    return "t-" + uuid.uuid4().hex[:12]


async def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query against the database from a trio test (own loop and connection)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()

    if trio_asyncio.current_loop.get() is not None:
        return await trio_asyncio.aio_as_trio(go)()
    try:
        async with trio_asyncio.open_loop():
            return await trio_asyncio.aio_as_trio(go)()
    except BaseExceptionGroup as group:
        raise primary_error(group) from None


@pytest.fixture
def db_query(dsn: str) -> Any:
    """``await db_query(sql, *args)`` -> rows, against the session database."""

    async def run(sql: str, *args: Any) -> list[asyncpg.Record]:
        return await query(dsn, sql, *args)

    return run


def quickstart_args(dsn: str, run_id: str, data_dir: Any) -> list[str]:
    """``run`` of the bundled example with the quickstart executor into ``dsn`` (add more flags)."""
    return [
        "run",
        "examples/quickstart.jsonl",
        "--executor",
        "python:examples.quickstart:score",
        "--db",
        dsn,
        "--run-id",
        run_id,
        "--data-dir",
        str(data_dir),
    ]


@pytest.fixture(autouse=True)
def _no_leaked_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's ARCFLOW_DB by accident."""
    monkeypatch.delenv("ARCFLOW_DB", raising=False)


__all__ = ["IN_CI", "query", "quickstart_args", "trio"]
