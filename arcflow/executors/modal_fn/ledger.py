"""The function-call ids of a run, in its PostgreSQL, as soon as they are known.

A process that dies (killed, the machine lost) cannot write the outcomes of the calls it
had in flight, but those calls go on running on Modal, and Modal keeps their results for
a while.  So every call id is recorded in ``arcflow.modal_calls`` as soon as the spawn
returns it, keyed by the attempt it belongs to ``(run_id, scenario_id, epoch, attempt)``;
``--resume`` reads back the ids of the attempts that have no outcome and waits for those
calls instead of spawning them again.

Why a table of the executor's own, not an outcome row: an outcome is written once, when
its attempt ends (its key is the attempt, written ``ON CONFLICT DO NOTHING``, so a row
written early would keep the final one out), and it goes through the batcher, which may
hold it for ``--flush-interval`` seconds.  The ledger is small (one row per attempt,
about 100 bytes), and written in batches: the ids noted since the last write go in one
transaction at most ``interval_s`` (50 ms) after the first of them, by a task of the
ledger's own on the SDK's event loop, where the spawn returned the id (so noting an id
is a list append, no thread hop and no database round trip per call).  A process that
dies in those milliseconds re-runs the calls whose ids were not written yet.

When the process ends normally its rows are deleted, and those of a dead process it
re-attached to (all those attempts have ended by then); only a process that died leaves
rows, which its resume reads.

It fails soft: a database that does not answer leaves the ids pending (at most
``max_pending``, the oldest dropped beyond that) and retries with backoff; an id that
never reached the table only means that its call runs again on resume.  Its counters are
plain numbers read from the trio thread.

Everything here runs on the SDK's event loop (:class:`~.sdk.FunctionOps` owns it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from ...retry import Backoff

log = logging.getLogger("arcflow.executors.modal_fn")

__all__ = ["TABLE", "CallKey", "CallLedger", "LedgerStats"]

#: The table (in the arcflow schema).
TABLE = "arcflow.modal_calls"
#: (scenario_id, epoch, attempt) of one attempt of a run.
CallKey = tuple[str, int, int]

#: Serialises the table's creation between processes starting at once.
_CREATE_LOCK = 0x4D464E43  # "MFNC"

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id       text NOT NULL,
    scenario_id  text NOT NULL,
    epoch        integer NOT NULL,
    attempt      integer NOT NULL,
    call_id      text NOT NULL,
    function     text NOT NULL,
    state        text NOT NULL CHECK (state IN ('spawned', 'cancelled')),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    client       text,
    PRIMARY KEY (run_id, scenario_id, epoch, attempt)
)
"""

_SPAWNED = f"""
INSERT INTO {TABLE} (run_id, scenario_id, epoch, attempt, call_id, function, state, client)
VALUES ($1, $2, $3, $4, $5, $6, 'spawned', $7)
ON CONFLICT (run_id, scenario_id, epoch, attempt) DO UPDATE
SET call_id = EXCLUDED.call_id, function = EXCLUDED.function, state = 'spawned',
    updated_at = now(), client = EXCLUDED.client
"""

#: The rows a process wrote, deleted when it ends normally: every attempt of it has ended
#: then (its outcome written or spilled), so nothing of it is in flight any more.
_FORGET = f"""
DELETE FROM {TABLE}
WHERE run_id = ANY($1::text[]) AND (client = $2 OR call_id = ANY($3::text[]))
"""

_CANCELLED = f"""
UPDATE {TABLE} SET state = 'cancelled', updated_at = now()
WHERE run_id = $1 AND scenario_id = $2 AND epoch = $3 AND attempt = $4 AND call_id = $5
"""

#: Calls of ``function`` spawned for attempts of the run that have no outcome, not cancelled.
_IN_FLIGHT = f"""
SELECT c.scenario_id, c.epoch, c.attempt, c.call_id
FROM {TABLE} c
WHERE c.run_id = $1 AND c.function = $2 AND c.state = 'spawned'
  AND NOT EXISTS (
      SELECT 1 FROM arcflow.outcomes o
      WHERE o.run_id = c.run_id AND o.scenario_id = c.scenario_id
        AND o.epoch = c.epoch AND o.attempt = c.attempt
  )
"""

#: A row to write: ("spawned" | "cancelled", run_id, key, call_id).
_Row = tuple[str, str, CallKey, str]


@attrs.define
class LedgerStats:
    """What the ledger did (plain numbers, read from the trio thread)."""

    #: Rows written, transactions (batches) committed, and batches that failed.
    written: int = 0
    batches: int = 0
    failures: int = 0
    #: Rows dropped because too many were pending (the database away for long).
    dropped: int = 0
    #: Rows noted and not written yet.
    pending: int = 0


class CallLedger:
    """(asyncio) Function-call ids of attempts, written to ``arcflow.modal_calls`` in batches.

    ``dsn`` is the run's database (the runtime hands it over: it may hold a password and
    is never logged); the ledger has a connection of its own.
    """

    def __init__(
        self,
        dsn: str | None,
        *,
        function: str,
        interval_s: float = 0.05,
        timeout_s: float = 5.0,
        max_pending: int = 100_000,
    ) -> None:
        self.function = function
        #: This process's mark on its rows (deleted when it ends normally).
        self.client = uuid.uuid4().hex[:16]
        self._runs: set[str] = set()
        #: Calls of a process that died, read on resume (deleted with this process's rows).
        self._adopted: list[str] = []
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.stats = LedgerStats()
        self._dsn = dsn
        self._conn: Any = None
        self._pending: list[_Row] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned = False
        self._closing = False

    # -- set-up and resume ------------------------------------------------------------------

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            import asyncpg

            self._conn = await asyncpg.connect(
                self._dsn,
                timeout=self.timeout_s,
                command_timeout=self.timeout_s,
                server_settings={"application_name": "arcflow modal-fn"},
            )
        return self._conn

    async def prepare(self) -> None:
        """Create the table if it is missing, start the writer (raises the database's errors)."""
        conn = await self._connection()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK)
            await conn.execute(_CREATE)
            await conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS client text")
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def in_flight(self, run_id: str) -> dict[CallKey, str]:
        """Call ids of the run's attempts that were spawned, not cancelled, and have no
        outcome: the calls a process that died had in flight."""
        conn = await self._connection()
        rows: list[Mapping[str, Any]] = await conn.fetch(_IN_FLIGHT, run_id, self.function)
        if rows:
            self._runs.add(run_id)
            self._adopted = [r["call_id"] for r in rows]
        return {(r["scenario_id"], r["epoch"], r["attempt"]): r["call_id"] for r in rows}

    # -- noting ----------------------------------------------------------------------------

    def spawned(self, run_id: str, key: CallKey, call_id: str) -> None:
        """Note a spawned call (written within ``interval_s``)."""
        self._add(("spawned", run_id, key, call_id))

    def cancelled(self, run_id: str, key: CallKey, call_id: str) -> None:
        """Note that a call was cancelled on Modal's side (it is not re-attached on resume)."""
        self._add(("cancelled", run_id, key, call_id))

    def _add(self, row: _Row) -> None:
        pending = self._pending
        pending.append(row)
        self._trim()
        self.stats.pending = len(pending)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _trim(self) -> None:
        pending = self._pending
        if len(pending) > self.max_pending:
            drop = len(pending) - self.max_pending
            del pending[:drop]
            self.stats.dropped += drop

    # -- writing ---------------------------------------------------------------------------

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        backoff = Backoff(base=0.5, cap=10.0)
        tries = backoff.start(clock=time.monotonic)
        while True:
            await wake.wait()
            if not self._closing:
                await asyncio.sleep(self.interval_s)  # let a batch gather
            wake.clear()
            if await self._write_pending():
                tries = backoff.start(clock=time.monotonic)
            else:
                await asyncio.sleep(tries.next_delay() or 10.0)
                wake.set()
            if self._closing and not self._pending:
                return

    async def _write_pending(self) -> bool:
        """Write what is pending in one transaction; False (rows kept) when it failed."""
        rows, self._pending = self._pending, []
        if not rows:
            return True
        spawned = [
            (run, *key, call_id, self.function, self.client)
            for kind, run, key, call_id in rows
            if kind == "spawned"
        ]
        cancelled = [
            (run, *key, call_id) for kind, run, key, call_id in rows if kind == "cancelled"
        ]
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await self._connection()
                async with conn.transaction():
                    if spawned:
                        await conn.executemany(_SPAWNED, spawned)
                    if cancelled:
                        await conn.executemany(_CANCELLED, cancelled)
        except asyncio.CancelledError:
            self._pending[:0] = rows
            raise
        except Exception as exc:
            self._pending[:0] = rows
            self._trim()
            self.stats.pending = len(self._pending)
            self.stats.failures += 1
            self._drop_connection()
            if not self._warned:
                self._warned = True
                log.warning(
                    "modal-fn: cannot record function-call ids in %s (%s: %s); %d kept and "
                    "written once the database answers (until then a resume re-runs those "
                    "calls instead of waiting for them)",
                    TABLE,
                    type(exc).__name__,
                    exc,
                    len(self._pending),
                )
            return False
        self._runs.update(run for _, run, _, _ in rows)
        self.stats.batches += 1
        self.stats.written += len(rows)
        self.stats.pending = len(self._pending)
        if self._warned:
            self._warned = False
            log.warning("modal-fn: function-call ids are recorded again")
        return True

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self, deadline_s: float) -> None:
        """Write what is pending (within ``deadline_s``), forget this process's rows (its
        attempts have all ended), then close the connection."""
        self._closing = True
        task = self._task
        if task is not None and self._wake is not None:
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=deadline_s)
            if not done:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._pending:
            log.warning(
                "modal-fn: %d function-call id(s) could not be recorded; a resume re-runs "
                "those calls",
                len(self._pending),
            )
        elif self._runs:
            try:
                async with asyncio.timeout(min(deadline_s, self.timeout_s)):
                    conn = await self._connection()
                    await conn.execute(_FORGET, sorted(self._runs), self.client, self._adopted)
            except Exception as exc:  # the rows only take room; a resume ignores ended attempts
                log.debug("modal-fn: could not delete this run's call ids: %s", exc)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(2):
                    await conn.close()
            except Exception:
                conn.terminate()
