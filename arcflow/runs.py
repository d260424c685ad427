"""The run layer: a run's row in PostgreSQL from start to end, and what a resumed run skips.

A run is recorded in ``arcflow.runs`` when it starts (``running``) and when
it ends (``finished``, ``stopped``, ``failed`` or ``incomplete``).  Resuming
it (:func:`plan_resume`) reads every scenario's latest stored attempt:
scenarios with a final outcome are skipped, the others continue at the next
attempt number, and a scenario whose content changed since is refused unless
forced.  The database itself is opened by :func:`arcflow.store.open_store`,
which reports use too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from .errors import ArcflowError, DataDirError, ResumeError, RunInUse
from .journal import make_private_dir
from .models import RETRYABLE_STATUSES, Scenario, Status
from .scenarios import iter_file
from .selection import Selection
from .store import Store

log = logging.getLogger("arcflow.runs")

__all__ = ["Prior", "ResumePlan", "RunLock", "RunRecord", "plan_resume", "read_prior", "run_status"]


@attrs.frozen
class ResumePlan:
    """What a resumed run skips, and the attempt number the others start at.

    Call it with a scenario to ask whether it is skipped (it is the ``skip``
    of :meth:`arcflow.Runtime.run_file`).
    """

    #: (scenario id, epoch) of every repeat that already has a final outcome.
    skip: frozenset[tuple[str, int]]
    #: Next attempt number per (scenario id, epoch) with stored attempts.
    first_attempts: Mapping[tuple[str, int], int]

    @property
    def skipped(self) -> int:
        """How many scenario repeats (epochs) are skipped."""
        return len(self.skip)

    def __call__(self, scenario: Scenario) -> bool:
        return (scenario.id, scenario.epoch) in self.skip


async def plan_resume(
    store: Store, run_id: str, path: Path | str, *, force: bool = False, retry_errors: bool = False
) -> ResumePlan:
    """Plan the resume of ``run_id`` over the scenario file ``path``.

    Raises :class:`ResumeError` listing (file:line) the scenarios whose
    content changed since the run first ran them, unless ``force``: then they
    run again as they are now.  With ``retry_errors``, ``error`` and
    ``timeout`` outcomes run again too.
    """
    path = Path(path)
    latest = await store.latest_attempts(run_id)
    by_id: dict[str, list[tuple[int, tuple[int, str, bool, str | None]]]] = {}
    for (sid, epoch), prior in latest.items():
        by_id.setdefault(sid, []).append((epoch, prior))

    def check() -> tuple[set[tuple[str, int]], dict[tuple[str, int], int], list[str]]:
        skip: set[tuple[str, int]] = set()
        first_attempts: dict[tuple[str, int], int] = {}
        changed: list[str] = []
        for lineno, scenario in iter_file(path):
            stored = by_id.get(scenario.id)
            if not stored:
                continue
            now = scenario.content_hash
            for epoch, (attempt, status, final, digest) in stored:
                key = (scenario.id, epoch)
                first_attempts[key] = attempt + 1
                if digest is not None and digest != now:
                    # With --force a changed scenario runs again as it is now: its stored
                    # outcome describes the old content.
                    if epoch == min(e for e, _ in stored):
                        changed.append(f"{path}:{lineno}: scenario {scenario.id!r}")
                    continue
                done = final and status != Status.CANCELLED.value
                if done and not (retry_errors and Status(status) in RETRYABLE_STATUSES):
                    skip.add(key)
        return skip, first_attempts, changed

    skip, first_attempts, changed = await trio.to_thread.run_sync(check)
    if changed and not force:
        shown = "\n  ".join(changed[:10])
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise ResumeError(
            f"{len(changed)} scenario(s) changed since run {run_id} first ran them:\n"
            f"  {shown}{more}\n"
            "Restore the original file, start a new run, or pass --force to re-run them as they are now."
        )
    log.info("resume %s: %d scenarios already done, skipped", run_id, len(skip))
    return ResumePlan(skip=frozenset(skip), first_attempts=first_attempts)


def run_status(*, in_journal: int, failed: bool, stopped: bool, lost: int = 0) -> str:
    """How a run ended: ``failed`` if an outcome was lost or an actor failed for good,
    else ``incomplete`` while anything is still in its journal, then ``stopped`` (a stop
    request) or ``finished``.  (A run whose process ended
    without recording its end reads ``interrupted``: see :meth:`RunLock.mark_interrupted`.)"""
    if lost:
        return "failed"
    if in_journal:
        return "incomplete"
    if failed:
        return "failed"
    if stopped:
        return "stopped"
    return "finished"


@attrs.define
class RunRecord:
    """One run's row in ``arcflow.runs``, written through ``store``."""

    store: Store
    run_id: str
    suite: str | None = None
    suite_hash: str | None = None
    scenario_count: int | None = None
    #: The row as it was before this start (a resumed run's), for :meth:`restore`.
    previous: dict[str, Any] | None = None

    async def start(
        self,
        *,
        executor: Mapping[str, Any],
        config: Mapping[str, Any],
        resume: bool,
        join: bool = False,
    ) -> None:
        """Mark the run ``running``; a resume of a run the database does not know is refused.

        ``join`` (a worker of a shared run) keeps the config of a run already
        recorded; the first worker records it.
        """
        self.previous = await self.store.get_run(self.run_id)
        if join and self.previous is not None:
            await self.store.fetchval(
                "UPDATE arcflow.runs SET status = 'running', finished_at = NULL "
                "WHERE run_id = $1 RETURNING 1",
                self.run_id,
            )
            return
        if not resume and self.previous is not None:
            # A new run under an existing id would add nothing (the old rows keep their
            # keys) and say it finished: refuse, saying what to do.
            raise ResumeError(
                f"run {self.run_id!r} already exists in {self.store.redacted_dsn} (status "
                f"{self.previous.get('status')}): continue it with --resume {self.run_id} "
                "(Runtime(resume=True)), or give the new run an id of its own"
            )
        if resume and self.previous is None:
            raise ResumeError(
                f"cannot resume run {self.run_id!r}: no such run in {self.store.redacted_dsn} "
                "(check the id, and --db / --data-dir)"
            )
        await self.store.start_run(
            self.run_id,
            suite=self.suite,
            suite_hash=self.suite_hash,
            executor=executor,
            config=config,
            scenarios=self.scenario_count,
        )

    async def restore(self) -> None:
        """Put the row back as it was before :meth:`start` (a resume refused before it ran anything)."""
        prev = self.previous
        if prev is None:
            return
        try:
            await self.store.restore_run(prev)
        except ArcflowError as exc:
            log.warning("run %s: could not restore the run's row: %s", self.run_id, exc)

    async def finish(self, *, status: str, summary: Mapping[str, Any]) -> None:
        """Record how the run ended; a database that cannot take it now is logged, not raised."""
        try:
            await self.store.finish_run(self.run_id, status=status, summary=summary)
        except ArcflowError as exc:
            log.warning("run %s: could not record the run's end: %s", self.run_id, exc)


def _lock_key(run_id: str) -> int:
    """The advisory lock key of a run (a signed 64-bit number derived from its id)."""
    digest = hashlib.blake2b(
        b"arcflow-run:" + run_id.encode("utf-8", "surrogatepass"), digest_size=8
    )
    return int.from_bytes(digest.digest(), "big", signed=True)


class RunLock:
    """One run, one owner: who holds a run, held for as long as the run goes.

    * a PostgreSQL session advisory lock on a connection of its own (released
      by the server if the process dies), and a row in ``arcflow.run_owners``
      saying who holds it (host, pid, since when);
    * an exclusive ``flock`` on ``<journal>.lock``, so two processes on one
      machine never share a run's spill journal, even while the database is
      down.

    :meth:`acquire` raises :class:`RunInUse` naming the holder.  The lease
    row has a heartbeat column, so that it can become a lease with expiry for
    several workers sharing a run.
    """

    def __init__(
        self, dsn: str | None, run_id: str, journal_path: Path, *, shared: bool = False
    ) -> None:
        self.run_id = run_id
        #: A shared run (several workers): the advisory lock is taken shared, so workers
        #: hold it together and a process driving the run alone is refused, and vice versa.
        self.shared = shared
        self.journal_path = Path(journal_path)
        self._store = Store(dsn)
        self._token = uuid.uuid4().hex
        self._fd: int | None = None
        self._locked = False

    @property
    def lock_path(self) -> Path:
        """The file locked beside the journal."""
        return self.journal_path.with_name(self.journal_path.name + ".lock")

    @staticmethod
    def describe_self() -> str:
        """``host pid since`` of this process, as the holder of a run."""
        return f"{socket.gethostname()} pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}"

    async def acquire(self) -> None:
        """Hold the run, or raise :class:`RunInUse` naming who holds it."""
        try:
            await trio.to_thread.run_sync(self._lock_file)
        except OSError as exc:
            raise DataDirError(
                f"cannot use the data folder {self.lock_path.parent}: {exc.strerror or exc}; "
                "make it writable, or choose another --data-dir"
            ) from None
        try:
            await self._lock_database()
        except BaseException:
            with trio.move_on_after(5, shield=True):
                await trio.to_thread.run_sync(self._unlock_file)
                await self._store.aclose()
            raise

    def _lock_file(self) -> None:
        path = self.lock_path
        make_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunInUse(
                f"run {self.run_id!r} is already being run on this machine by {holder} "
                f"(its journal {self.journal_path} is locked): wait for that process to end, "
                f"or stop it; one run is driven by one process at a time",
                holder=holder,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.describe_self().encode(), 0)
        self._fd = fd

    def _unlock_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock

    async def _lock_database(self) -> None:
        key = _lock_key(self.run_id)
        if self.shared:
            got = await self._store.fetchval("SELECT pg_try_advisory_lock_shared($1::bigint)", key)
            if not got:
                raise RunInUse(
                    f"run {self.run_id!r} is being run by one process alone (database "
                    f"{self._store.redacted_dsn}), not shared by workers: wait for it to end"
                )
            self._locked = True
            return
        got = await self._store.fetchval("SELECT pg_try_advisory_lock($1::bigint)", key)
        if not got:
            workers = await self._store.fetchval(
                "SELECT count(*) FROM arcflow.workers WHERE run_id = $1 AND stopped_at IS NULL",
                self.run_id,
            )
            if workers:
                raise RunInUse(
                    f"run {self.run_id!r} is shared by {workers} worker(s) (see "
                    f"`python -m arcflow workers {self.run_id}`): join it with "
                    f"`python -m arcflow work {self.run_id}` instead",
                )
            row = await self._store.fetch(
                "SELECT host, pid, acquired_at FROM arcflow.run_owners WHERE run_id = $1",
                self.run_id,
            )
            holder = (
                f"{row[0]['host']} pid {row[0]['pid']} since {row[0]['acquired_at'].isoformat(timespec='seconds')}"
                if row
                else "another process"
            )
            raise RunInUse(
                f"run {self.run_id!r} is already being run by {holder} (database "
                f"{self._store.redacted_dsn}): wait for that process to end, or stop it; "
                "one run is driven by one process at a time",
                holder=holder,
            )
        self._locked = True
        await self._store.fetchval(
            """
            INSERT INTO arcflow.run_owners (run_id, host, pid, token)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (run_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
                token = EXCLUDED.token, acquired_at = now(), heartbeat_at = now(),
                released_at = NULL
            RETURNING 1
            """,
            self.run_id,
            socket.gethostname(),
            os.getpid(),
            self._token,
        )

    async def mark_interrupted(self, limit: int = 100) -> list[str]:
        """Runs left ``running`` by a process that ended without recording it: now ``interrupted``.

        A run is left so when its process was killed, or the database was down
        when it ended.  Only runs nobody holds are marked (their advisory lock
        is free); returns their ids.
        """
        rows = await self._store.fetch(
            "SELECT run_id FROM arcflow.runs WHERE status = 'running' AND run_id <> $1 "
            "ORDER BY started_at LIMIT $2",
            self.run_id,
            limit,
        )
        marked: list[str] = []
        for row in rows:
            other = row["run_id"]
            key = _lock_key(other)
            if not await self._store.fetchval("SELECT pg_try_advisory_lock($1::bigint)", key):
                continue  # a live process holds it
            try:
                done = await self._store.fetchval(
                    "UPDATE arcflow.runs SET status = 'interrupted' "
                    "WHERE run_id = $1 AND status = 'running' RETURNING run_id",
                    other,
                )
            finally:
                with trio.move_on_after(5, shield=True):
                    await self._store.fetchval("SELECT pg_advisory_unlock($1::bigint)", key)
            if done:
                marked.append(other)
                log.warning(
                    "run %s was left 'running' by a process that ended without recording it; "
                    "marked 'interrupted' (resume it with --resume %s)",
                    other,
                    other,
                )
        return marked

    async def release(self) -> None:
        """Let the run go: the owner row says so, the locks are released.  Shielded, bounded."""
        with trio.move_on_after(10, shield=True):
            try:
                if self._locked and self.shared:
                    await self._store.fetchval(
                        "SELECT pg_advisory_unlock_shared($1::bigint)", _lock_key(self.run_id)
                    )
                elif self._locked:
                    await self._store.fetchval(
                        "UPDATE arcflow.run_owners SET released_at = now() "
                        "WHERE run_id = $1 AND token = $2 RETURNING 1",
                        self.run_id,
                        self._token,
                    )
                    await self._store.fetchval(
                        "SELECT pg_advisory_unlock($1::bigint)", _lock_key(self.run_id)
                    )
            except ArcflowError as exc:  # the connection is gone: the server released the lock
                log.info("run %s: could not record the release of the run: %s", self.run_id, exc)
            finally:
                self._locked = False
                with trio.move_on_after(5, shield=True):  # still inside the 10 s above
                    await self._store.aclose()
                    await trio.to_thread.run_sync(self._unlock_file)


@attrs.frozen
class Prior:
    """What a run to come needs from earlier runs (see :func:`read_prior`)."""

    #: The resumed run's stored selection (None: it took everything, or no resume).
    selection: Selection | None = None
    #: The resumed run's epochs (None: no resume).
    epochs: int | None = None
    #: The ids ``only_failed`` named (None: not asked).
    failed: frozenset[str] | None = None
    #: A shared run's settings for workers that join it (None: not shared, or no resume).
    worker: dict[str, Any] | None = None
    #: Whether the resumed run is shared.
    shared: bool = False


async def read_prior(
    db: str | None,
    data_dir: Path | str,
    *,
    resume: str | None,
    only_failed: str | None,
    require: bool = False,
) -> Prior:
    """Before a run starts: a resumed run's selection and epochs, and the ids ``only_failed`` names.

    ``only_failed`` is a run id: its scenarios whose latest final outcome is
    ``failed``, ``error`` or ``timeout``.  Raises :class:`ResumeError` for an
    unknown run.
    """
    from ._trio_asyncio import import_trio_asyncio
    from .errors import arcflow_errors_unwrapped
    from .store import open_store

    trio_asyncio = import_trio_asyncio()
    stored: Selection | None = None
    epochs: int | None = None
    failed: frozenset[str] | None = None
    worker: dict[str, Any] | None = None
    shared = False
    with arcflow_errors_unwrapped():
        async with trio_asyncio.open_loop():
            store = await open_store(db, data_dir, for_reading=True)
            try:
                if resume is not None:
                    row = await store.get_run(resume)
                    if row is None and require:
                        raise ResumeError(
                            f"no run {resume!r} in {store.redacted_dsn} (check the id, and "
                            "--db / --data-dir)"
                        )
                    if row is not None:
                        config = row.get("config") or {}
                        if isinstance(config, str):
                            config = json.loads(config)
                        if config.get("selection"):
                            stored = Selection.from_description(config["selection"])
                        epochs = int(config.get("epochs", 1))
                        worker = config.get("worker")
                        shared = bool(config.get("shared"))
                if only_failed is not None:
                    if await store.get_run(only_failed) is None:
                        raise ResumeError(
                            f"--only-failed {only_failed}: no such run in {store.redacted_dsn}"
                        )
                    rows = await store.fetch(
                        """
                        SELECT scenario_id FROM (
                            SELECT DISTINCT ON (scenario_id) scenario_id, status
                            FROM arcflow.outcomes WHERE run_id = $1 AND final
                            ORDER BY scenario_id, attempt DESC
                        ) latest WHERE status IN ('failed', 'error', 'timeout')
                        """,
                        only_failed,
                    )
                    failed = frozenset(r["scenario_id"] for r in rows)
            finally:
                await store.aclose()
    return Prior(selection=stored, epochs=epochs, failed=failed, worker=worker, shared=shared)
