"""The benchmark's PostgreSQL: a throwaway server of its own, or the one given with ``--db``.

With no ``--db``, :class:`BenchDB` starts :class:`arcflow.testing.TemporaryPostgres`
(a server on a TCP port in a temporary folder, deleted afterwards), turns
PostgreSQL's durability defaults back on (``fsync``, ``synchronous_commit``,
``full_page_writes``; the test helper turns them off) and creates
two databases in it: ``arcflow_bench`` for every measurement and
``arcflow_rt`` for the round-trip counts (there, ``log_statement = all`` so
the server's own log counts statements when ``pg_stat_statements`` is not
installed).  It can stop and start the server for the outage benchmark.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .baselines import run_asyncio


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


_STATEMENT_LINE = re.compile(r"LOG:\s+(?:statement|execute [^:]*):")


class BenchDB:
    """Where the benchmarks write, and PostgreSQL's own counters about it."""

    def __init__(self, dsn: str | None = None, *, allow_truncate: bool = False) -> None:
        self.pg: Any = None
        self.external = dsn is not None
        if dsn is None:
            from arcflow.testing import TemporaryPostgres

            self.pg = TemporaryPostgres()
            self.pg.start()
            admin = self.pg.dsn
            # TemporaryPostgres turns durability off for fast tests; a benchmark measures a real
            # server, so restore PostgreSQL's defaults (every commit is flushed to disk).
            run_asyncio(
                _execute(
                    admin,
                    "ALTER SYSTEM SET fsync = on",
                    "ALTER SYSTEM SET synchronous_commit = on",
                    "ALTER SYSTEM SET full_page_writes = on",
                    "SELECT pg_reload_conf()",
                )
            )
            run_asyncio(
                _execute(admin, "CREATE DATABASE arcflow_bench", "CREATE DATABASE arcflow_rt")
            )
            run_asyncio(_execute(admin, "ALTER DATABASE arcflow_rt SET log_statement = 'all'"))
            self.dsn = with_database(admin, "arcflow_bench")
            self.rt_dsn = with_database(admin, "arcflow_rt")
            self.admin_dsn = admin
        else:
            self.dsn = self.rt_dsn = self.admin_dsn = dsn
            self._check_dedicated(allow_truncate)
        self.has_pg_stat_statements = self._try_pg_stat_statements()

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        if self.pg is None:
            try:  # leave a dedicated --db as empty as it was found
                run_asyncio(
                    _execute(
                        self.dsn, "TRUNCATE arcflow.outcomes, arcflow.batches, arcflow.dead_letters"
                    )
                )
            except Exception:
                pass
        if self.pg is not None:
            self.pg.cleanup()
            self.pg = None

    @property
    def can_stop(self) -> bool:
        return self.pg is not None

    def stop(self) -> None:
        self.pg.stop("fast")

    def start(self) -> None:
        self.pg.start()

    # -- facts ----------------------------------------------------------------------------------

    def server_version(self) -> str:
        return str(run_asyncio(_fetch(self.dsn, "SHOW server_version"))[0][0])

    def settings(self) -> dict[str, str]:
        names = ["fsync", "synchronous_commit", "full_page_writes", "shared_buffers"]
        rows = run_asyncio(
            _fetch(self.dsn, "SELECT name, setting FROM pg_settings WHERE name = ANY($1)", names)
        )
        return {r["name"]: r["setting"] for r in rows}

    # -- between measurements ---------------------------------------------------------------------

    def reset(self, dsn: str | None = None) -> None:
        """Empty the outcome tables and checkpoint, so each measurement starts the same."""
        run_asyncio(
            _execute(
                dsn or self.dsn,
                "TRUNCATE arcflow.outcomes, arcflow.batches, arcflow.dead_letters",
                "CHECKPOINT",
            )
        )

    def rows(self, run_id: str, dsn: str | None = None) -> tuple[int, int]:
        """(rows, distinct scenario ids) stored for ``run_id``."""
        r = run_asyncio(
            _fetch(
                dsn or self.dsn,
                "SELECT count(*), count(DISTINCT scenario_id) FROM arcflow.outcomes WHERE run_id = $1",
                run_id,
            )
        )[0]
        return int(r[0]), int(r[1])

    def fetch(self, sql: str, *args: Any, dsn: str | None = None) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = run_asyncio(_fetch(dsn or self.dsn, sql, *args))
        return rows

    # -- PostgreSQL's counters ----------------------------------------------------------------------

    def _try_pg_stat_statements(self) -> bool:
        """True if ``pg_stat_statements`` is installed and loaded (never installs it)."""
        try:
            run_asyncio(_fetch(self.rt_dsn, "SELECT count(*) FROM pg_stat_statements"))
            return True
        except Exception:
            return False

    def _check_dedicated(self, allow: bool) -> None:
        """Refuse a ``--db`` whose arcflow tables hold rows, unless allowed (they get emptied)."""
        try:
            rows = run_asyncio(_fetch(self.dsn, "SELECT count(*) FROM arcflow.outcomes"))[0][0]
        except asyncpg.UndefinedTableError:
            return
        if rows and not allow:
            raise SystemExit(
                f"--db: arcflow.outcomes there holds {rows:,} rows, and the benchmark empties it before "
                "every measurement. Give a dedicated database, or pass --allow-truncate if it is one."
            )

    @property
    def statement_source(self) -> str:
        if self.has_pg_stat_statements:
            return "pg_stat_statements"
        if self.pg is not None:
            return "server log (log_statement = all)"
        return "unavailable"

    def counters(self) -> dict[str, int | None]:
        """Commits, rollbacks and statements so far in the round-trip database.

        Statistics reach the shared counters when a backend exits (or has been
        idle a second); callers close their connections first, and this waits
        1.5 s, then reads once.  A fixed schedule: when the reading itself lands
        in the measured database (``--db``), it adds the same count every time,
        which the round-trip benchmark's marginal method cancels out.
        """
        database = urlsplit(self.rt_dsn).path.lstrip("/") or "postgres"
        monitor = self.admin_dsn if self.pg is not None else self.rt_dsn
        time.sleep(1.5)
        row = run_asyncio(
            _fetch(
                monitor,
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
                database,
            )
        )[0]
        return {"commits": int(row[0]), "rollbacks": int(row[1]), "statements": self._statements()}

    def _statements(self) -> int | None:
        if self.has_pg_stat_statements:
            rows = run_asyncio(
                _fetch(
                    self.rt_dsn,
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database() "
                    "AND s.query NOT ILIKE '%pg_stat_statements%' AND s.query NOT ILIKE '%pg_stat_database%'",
                )
            )
            return int(rows[0][0])
        if self.pg is not None:
            log = Path(self.pg.pgdata) / "server.log"
            try:
                text = log.read_text(errors="replace")
            except FileNotFoundError:
                return None
            return len(_STATEMENT_LINE.findall(text))
        return None
