"""The PostgreSQL store: asyncpg, driven from trio through trio-asyncio.

Every public method is a trio coroutine that crosses into asyncio once
(``aio_as_trio``), so the bridge costs one hop per batch, not per record.
Failures are raised as :class:`TransientWriteError` or :class:`DataWriteError`
after :func:`classify`; anything else (a bug) propagates unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg
import trio

from .._trio_asyncio import import_trio_asyncio
from ..errors import DataWriteError, TransientWriteError, WriteError
from ..models import Batch, Outcome, Status
from .classify import classify, sqlstate_of
from .dsn import redact_dsn
from .schema import (
    BOOTSTRAP,
    CREATE_STAGING,
    FINISH_CLAIM,
    LATEST_VERSION,
    LOCK_FENCED_CLAIMS,
    LOG_BATCH,
    MERGE_STAGED,
    MERGE_STAGED_FENCED,
    MIGRATION_LOCK,
    MIGRATIONS,
    OUTCOME_COLUMNS,
    OUTCOMES_PKEY,
    SCHEMA,
    STAGING_TABLE,
    UNTAGGED_COLUMNS,
)

log = logging.getLogger("arcflow.store")

T = TypeVar("T")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _make_fast_dumps() -> Callable[[Any], str] | None:
    """``_dumps`` without building a JSON encoder per call (None if unavailable).

    Output is identical to ``_dumps``; anything the fast encoder refuses
    (including a circular reference, which it does not check) goes through
    ``_dumps``, which raises its usual error.
    """
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]

        if c_make_encoder is None:  # pragma: no cover - CPython always has it
            return None

        def default(o: Any) -> Any:
            raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")

        encoder = c_make_encoder(
            None, default, encode_basestring_ascii, None, ":", ",", False, False, True
        )

        def fast(value: Any) -> str:
            try:
                return "".join(encoder(value, 0))
            except Exception:
                return _dumps(value)

        sample = {"kind": "python", "b": [1, 2.5, None, True, "é\n"], "a": {"y": float("inf")}}
        if fast(sample) != _dumps(sample):  # pragma: no cover
            return None
        return fast
    except Exception:  # pragma: no cover - a Python whose json module differs
        return None


_fast_dumps = _make_fast_dumps() or _dumps
_STATUS_VALUES = {status: status.value for status in Status}
# Outcomes of one executor usually share one details mapping: remember the last one
# encoded (the object, a copy to notice changes, and its JSON).
_last_details: list[Any] = [None, None, ""]


def _details_json(details: Mapping[str, Any]) -> str:
    last = _last_details
    if details is last[0] and details == last[1]:
        return str(last[2])
    text = _fast_dumps(details if type(details) is dict else dict(details))
    last[0], last[1], last[2] = details, dict(details), text
    return text


# -- timestamptz on the wire ----------------------------------------------------------------------
#
# asyncpg's own timestamptz encoder compares each value with two infinities and
# converts it with astimezone() before subtracting PostgreSQL's epoch: about 600 ns
# a value, two values a row.  Store connections use the "tuple" format instead
# (microseconds since 2000-01-01 UTC), computed in one subtraction for the aware
# datetimes arcflow writes, and exactly as asyncpg does for anything else.

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PG_INFINITY = 0x7FFF_FFFF_FFFF_FFFF
_PG_NEGATIVE_INFINITY = -0x8000_0000_0000_0000
# asyncpg sends any value landing on datetime.max's or datetime.min's microsecond as an infinity.
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - _PG_EPOCH) // _MICROSECOND
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - _PG_EPOCH) // _MICROSECOND


def _micros(value: datetime) -> tuple[int]:
    micros = (value - _PG_EPOCH) // _MICROSECOND
    if micros == _MAX_MICROS:
        return (_PG_INFINITY,)
    if micros == _MIN_MICROS:
        return (_PG_NEGATIVE_INFINITY,)
    return (micros,)


def encode_timestamptz(value: Any) -> tuple[int]:
    """A timestamptz parameter as (microseconds since 2000-01-01 UTC,), as asyncpg would send it."""
    if type(value) is datetime and value.tzinfo is not None:
        try:
            micros = (value - _PG_EPOCH) // _MICROSECOND
        except TypeError:
            pass  # a tzinfo without an offset: naive, below
        else:
            if _MIN_MICROS < micros < _MAX_MICROS:  # the hot path: one subtraction, one comparison
                return (micros,)
            return _micros(value)
    if isinstance(value, datetime):
        if value.utcoffset() is None:  # naive (or a tzinfo without an offset): local time
            wall = value.replace(tzinfo=None)
            if wall == datetime.max:
                return (_PG_INFINITY,)
            if wall == datetime.min:
                return (_PG_NEGATIVE_INFINITY,)
        return _micros(value.astimezone(UTC))
    if isinstance(value, date):
        # asyncpg reads a date as midnight at the current local UTC offset.
        offset = datetime.now(UTC).astimezone().utcoffset() or timedelta(0)
        return _micros(datetime(value.year, value.month, value.day, tzinfo=timezone(offset)))
    raise TypeError(
        f"expected a datetime.date or datetime.datetime instance, got {type(value).__name__!r}"
    )


def decode_timestamptz(value: tuple[int]) -> datetime:
    """The inverse of :func:`encode_timestamptz`; infinities read as asyncpg reads them."""
    micros = value[0]
    if micros == _PG_INFINITY:
        return datetime.max
    if micros == _PG_NEGATIVE_INFINITY:
        return datetime.min
    return _PG_EPOCH + timedelta(microseconds=micros)


def encode_outcome(outcome: Outcome, batch_id: str, *, tags: bool = True) -> tuple[Any, ...]:
    """One COPY row for ``outcome``; raises DataWriteError if its JSON cannot be encoded.

    The row follows ``OUTCOME_COLUMNS``, or ``UNTAGGED_COLUMNS`` with ``tags=False``.
    """
    try:
        output = outcome.output
        if output is not None:
            output = _fast_dumps(output)
        executor = _details_json(outcome.executor)
        usage = _fast_dumps(outcome.usage) if outcome.usage is not None else None
    except (TypeError, ValueError) as exc:
        raise DataWriteError(
            f"outcome {outcome.scenario_id!r} attempt {outcome.attempt}: "
            f"output is not JSON-serialisable: {exc}"
        ) from exc
    started = outcome.started_at
    finished = outcome.finished_at
    row = (
        outcome.run_id,
        outcome.scenario_id,
        outcome.epoch,
        outcome.attempt,
        _STATUS_VALUES[outcome.status],
        outcome.final,
        outcome.score,
        output,
        outcome.error_type,
        outcome.error_message,
        started,
        finished,
        (finished - started).total_seconds() * 1000.0,
        executor,
        outcome.worker,
        outcome.scenario_hash,
        batch_id,
        usage,
    )
    return (*row, list(outcome.tags)) if tags else row


class Store:
    """One asyncpg connection to the arcflow schema, reconnected after failures.

    Not safe for concurrent use: each actor that writes owns its own Store.
    """

    def __init__(
        self,
        dsn: str | None,
        *,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        tcp_keepalive: float | None = 10.0,
    ) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.tcp_keepalive = tcp_keepalive
        self._conn: asyncpg.Connection | None = None

    @property
    def redacted_dsn(self) -> str:
        """The DSN with its password replaced by ``***`` (safe to log)."""
        return redact_dsn(self.dsn)

    # -- plumbing -----------------------------------------------------------------------------

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an asyncio coroutine function; classify and re-raise its failure.

        On a transient failure or a cancellation the connection is dropped, so
        the next call reconnects instead of reusing a connection in an unknown state.
        """
        trio_asyncio = import_trio_asyncio()  # lazily: importing it patches asyncio

        try:
            result: T = await trio_asyncio.aio_as_trio(fn)(*args)
            return result
        except trio.Cancelled:
            self._discard()
            raise
        except WriteError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind == "transient":
                self._discard()
                raise TransientWriteError(self._describe(exc), sqlstate=sqlstate_of(exc)) from exc
            if kind == "data":
                raise DataWriteError(
                    f"{type(exc).__name__}: {exc}", sqlstate=sqlstate_of(exc)
                ) from exc
            raise

    def _describe(self, exc: BaseException) -> str:
        """``Type: message``, saying what happened when the driver says nothing."""
        text = str(exc).strip()
        if not text and isinstance(exc, TimeoutError | asyncio.TimeoutError):
            text = (
                f"no answer from the database within statement_timeout={self.statement_timeout:g}s "
                "(a stalled server or a half-open connection); the connection is replaced"
            )
        return f"{type(exc).__name__}: {text or repr(exc)}"

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._aio(self._connect_aio)
        return self._conn

    async def _connect_aio(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            command_timeout=self.statement_timeout,
            server_settings={"application_name": "arcflow"},
        )
        try:
            if self.tcp_keepalive is not None:
                _set_keepalive(conn, self.tcp_keepalive)
            await conn.set_type_codec(
                "timestamptz",
                schema="pg_catalog",
                encoder=encode_timestamptz,
                decoder=decode_timestamptz,
                format="tuple",
            )
            await conn.execute(CREATE_STAGING)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def connect(self) -> None:
        """Open the connection now (raises TransientWriteError when unreachable)."""
        await self._connection()

    async def aclose(self) -> None:
        """Close the connection, waiting at most a few seconds (shielded)."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        trio_asyncio = import_trio_asyncio()

        with trio.move_on_after(5, shield=True) as scope:
            try:
                await trio_asyncio.aio_as_trio(conn.close)(timeout=4)
            except Exception:
                conn.terminate()
        if scope.cancelled_caught:
            conn.terminate()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Call ``fn(connection, *args)`` in asyncio, with classification and reconnects."""
        conn = await self._connection()
        return await self._aio(fn, conn, *args)

    # -- schema -------------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Create or upgrade the arcflow schema; returns the version now in force."""
        return await self.run(_migrate_aio)

    # -- writes -------------------------------------------------------------------------------

    async def write_batch(
        self,
        batch: Batch,
        *,
        run_id: str,
        source: str = "live",
        direct: bool = False,
        worker_id: str | None = None,
    ) -> int:
        """Write ``batch`` in one transaction, logged in ``arcflow.batches``; stored keys are skipped.

        With ``worker_id`` (a shared run), the outcomes are fenced: a final
        outcome stays final, and marks its claim done, only while its claim is
        still this worker's (see ``MERGE_STAGED_FENCED``); such a batch always
        takes the staging merge.

        The general path COPYs the rows into a staging table and moves them
        with one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.  With
        ``direct=True`` (a hint that no key of the batch is stored yet, as for
        a live batch's first try) the rows are COPY'd straight into
        ``arcflow.outcomes`` instead, which costs PostgreSQL about a third
        less; if a key is there after all, that transaction aborts on the
        primary key, leaves nothing behind, and the batch takes the general
        path.  Either way the result is the same.  Returns how many rows were new.
        """
        outcomes = batch.outcomes
        tagged = any(o.tags for o in outcomes)
        try:
            records = [encode_outcome(o, batch.id, tags=tagged) for o in outcomes]
        except Exception as exc:  # an output or a field the encoder cannot take: poison
            raise DataWriteError(
                f"cannot encode the batch for PostgreSQL: {type(exc).__name__}: {exc}"
            ) from exc
        columns = OUTCOME_COLUMNS if tagged else UNTAGGED_COLUMNS
        return await self.run(
            _write_aio,
            records,
            columns,
            batch.id,
            run_id,
            batch.reason.value,
            len(records),
            source,
            direct and worker_id is None,
            worker_id,
        )

    async def write_dead_letters(
        self, rows: Iterable[Mapping[str, Any]], *, worker_id: str | None = None
    ) -> None:
        """Insert dead-letter rows (one transaction); a key already there is skipped.

        With ``worker_id`` (a shared run), a row with ``final`` set ends its
        scenario's claim, if the claim is still this worker's: a poison outcome
        is the scenario's last word, as it would be in a run of its own.
        """
        rows = list(rows)
        done = [
            (r["run_id"], r["scenario_id"], r.get("epoch", 1), r["attempt"], worker_id)
            for r in rows
            if worker_id is not None and r.get("final")
        ]
        values = [
            (
                r["run_id"],
                r["scenario_id"],
                r.get("epoch", 1),
                r["attempt"],
                r["batch_id"],
                r["payload"],
                r["sqlstate"],
                r["message"],
                r["attempts"],
            )
            for r in rows
        ]
        await self.run(_dead_letters_aio, values, done)

    # -- runs ---------------------------------------------------------------------------------

    async def start_run(
        self,
        run_id: str,
        *,
        suite: str | None,
        suite_hash: str | None,
        executor: Mapping[str, Any],
        config: Mapping[str, Any],
        scenarios: int | None,
    ) -> None:
        """Record a run as running (a resumed run is marked running again)."""
        await self.run(
            _execute_aio,
            """
            INSERT INTO arcflow.runs (run_id, suite, suite_hash, executor, config, scenarios, status)
            VALUES ($1, $2, $3, $4, $5, $6, 'running')
            ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL,
                config = EXCLUDED.config, executor = EXCLUDED.executor,
                scenarios = COALESCE(EXCLUDED.scenarios, arcflow.runs.scenarios)
            """,
            run_id,
            suite,
            suite_hash,
            _dumps(dict(executor)),
            _dumps(dict(config)),
            scenarios,
        )

    async def finish_run(self, run_id: str, *, status: str, summary: Mapping[str, Any]) -> None:
        """Mark a run finished with its status and summary."""
        await self.run(
            _execute_aio,
            "UPDATE arcflow.runs SET status = $2, finished_at = now(), summary = $3 WHERE run_id = $1",
            run_id,
            status,
            _dumps(dict(summary)),
        )

    async def restore_run(self, row: Mapping[str, Any]) -> None:
        """Write back a run's row as :meth:`get_run` returned it."""
        await self.run(
            _execute_aio,
            """
            UPDATE arcflow.runs SET status = $2, finished_at = $3, summary = $4, config = $5,
                executor = $6, scenarios = $7
            WHERE run_id = $1
            """,
            row["run_id"],
            row["status"],
            row["finished_at"],
            row["summary"],
            row["config"],
            row["executor"],
            row["scenarios"],
        )

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row as a dict, or None."""
        row = await self.run(_fetchrow_aio, "SELECT * FROM arcflow.runs WHERE run_id = $1", run_id)
        return dict(row) if row is not None else None

    async def latest_attempts(
        self, run_id: str
    ) -> dict[tuple[str, int], tuple[int, str, bool, str | None]]:
        """For each (scenario, epoch) of the run: (last attempt, its status, final, scenario hash)."""
        rows = await self.run(
            _fetch_aio,
            """
            SELECT DISTINCT ON (scenario_id, epoch)
                scenario_id, epoch, attempt, status, final, scenario_hash
            FROM arcflow.outcomes WHERE run_id = $1
            ORDER BY scenario_id, epoch, attempt DESC
            """,
            run_id,
        )
        return {
            (r["scenario_id"], r["epoch"]): (
                r["attempt"],
                r["status"],
                r["final"],
                r["scenario_hash"],
            )
            for r in rows
        }

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """Run a read query (reports, tests)."""
        return await self.run(_fetch_aio, query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        """Run a query returning one value."""
        return await self.run(_fetchval_aio, query, *args)


# -- the asyncio side: each function is one bridge crossing ------------------------------------


async def _migrate_aio(conn: asyncpg.Connection) -> int:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(BOOTSTRAP)
        current = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM arcflow.schema_version"
        )
        if current > LATEST_VERSION:
            raise RuntimeError(
                f"database schema arcflow is at version {current}, newer than this arcflow "
                f"({LATEST_VERSION}); upgrade arcflow"
            )
        for version in range(current + 1, LATEST_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO arcflow.schema_version (version) VALUES ($1)", version)
            log.info("applied arcflow schema migration %d", version)
    # The staging table may have been created before the schema existed; it does not depend on it.
    await conn.execute(CREATE_STAGING)
    return LATEST_VERSION


async def _write_aio(
    conn: asyncpg.Connection,
    records: list[tuple[Any, ...]],
    columns: Sequence[str],
    batch_id: str,
    run_id: str,
    reason: str,
    size: int,
    source: str,
    direct: bool,
    worker_id: str | None = None,
) -> int:
    if worker_id is not None:
        async with conn.transaction():
            await conn.copy_records_to_table(STAGING_TABLE, records=records, columns=columns)
            await conn.execute(LOCK_FENCED_CLAIMS, worker_id)
            fenced: int = await conn.fetchval(
                MERGE_STAGED_FENCED, batch_id, run_id, reason, size, source, worker_id
            )
        return fenced
    if direct:
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "outcomes", schema_name=SCHEMA, records=records, columns=columns
                )
                await conn.execute(LOG_BATCH, batch_id, run_id, reason, size, source)
            return size
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != OUTCOMES_PKEY:
                raise
            log.debug(
                "batch %s: a key is already stored; merging through the staging table", batch_id
            )
    async with conn.transaction():
        await conn.copy_records_to_table(STAGING_TABLE, records=records, columns=columns)
        inserted: int = await conn.fetchval(MERGE_STAGED, batch_id, run_id, reason, size, source)
    return inserted


async def _dead_letters_aio(
    conn: asyncpg.Connection, values: list[tuple[Any, ...]], done: list[tuple[Any, ...]]
) -> None:
    async with conn.transaction():
        if done:
            await conn.executemany(FINISH_CLAIM, done)
        await conn.executemany(
            """
            INSERT INTO arcflow.dead_letters
                (run_id, scenario_id, epoch, attempt, batch_id, payload, sqlstate, message,
                 attempts)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (run_id, scenario_id, epoch, attempt) DO NOTHING
            """,
            values,
        )


async def _execute_aio(conn: asyncpg.Connection, query: str, *args: Any) -> str:
    result: str = await conn.execute(query, *args)
    return result


async def _fetch_aio(conn: asyncpg.Connection, query: str, *args: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(query, *args)
    return rows


async def _fetchrow_aio(conn: asyncpg.Connection, query: str, *args: Any) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(query, *args)
    return row


async def _fetchval_aio(conn: asyncpg.Connection, query: str, *args: Any) -> Any:
    return await conn.fetchval(query, *args)


def _set_keepalive(conn: asyncpg.Connection, seconds: float) -> None:
    """TCP keepalive and a user timeout on ``conn``'s socket (TCP only; a Unix socket is left alone).

    Probes start after ``seconds`` of silence, 3 probes a third of that apart;
    data unacknowledged for ``seconds`` fails the connection: a half-open
    connection is noticed in seconds, not at the statement timeout.
    """
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    idle = max(1, int(seconds))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    except OSError as exc:  # pragma: no cover - a platform without these options
        log.debug("could not set TCP keepalive on the database connection: %s", exc)
