"""Shared runs: a run's scenarios in PostgreSQL, claimed by workers with leases.

``python -m arcflow run FILE --shared`` loads the suite into ``arcflow.claims``
(one row per scenario and epoch, streamed) and works on it;
``python -m arcflow work RUN_ID`` on any machine joins.  Each worker:

* **claims** scenarios in chunks with ``FOR UPDATE SKIP LOCKED`` (pending
  ones, or those whose lease has run out), as the work channel has room
  (:func:`run_claim_source`, the source actor of a shared run);
* **heartbeats**: extends the leases of what it holds and says so in
  ``arcflow.workers`` (:func:`run_heartbeat`); a scenario whose claim it no
  longer holds (someone took it after the lease ran out) is cancelled, and if
  no heartbeat gets through for a whole lease, everything it runs is;
* **writes fenced**: each claim has a block of attempt numbers of its own
  (``CLAIM_BLOCK``), so two workers never write the same key, and a final
  outcome counts (stays final, marks the claim done) only while its claim is
  still the worker's (``MERGE_STAGED_FENCED``): a worker that was stopped
  past its lease and continued writes rows, never a second final outcome;
* **releases** what it has not finished when it stops, so others take it at
  once; a dead worker's claims come back when their lease runs out, and its
  spill journal is replayed by the next worker on the same machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from .errors import ArcflowError
from .models import Scenario
from .scenarios import SuiteInfo, iter_lines, loads
from .store import Store
from .store.schema import CLAIM_BLOCK

log = logging.getLogger("arcflow.fleet")

__all__ = [
    "FleetStats",
    "FleetStatus",
    "WorkerStatus",
    "adopt_orphan_journals",
    "fleet_status",
    "format_fleet",
    "load_claims",
    "new_worker_id",
    "release_claims",
    "run_claim_source",
    "run_heartbeat",
    "shared_run_status",
]


def new_worker_id() -> str:
    """A fresh worker id: host, pid and a few random characters."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@attrs.define
class FleetStats:
    """What this worker did in a shared run, and what the fleet looks like (from its heartbeat)."""

    #: Scenarios this worker claimed.
    claimed: int = 0
    #: Claims this worker found taken by another worker (its lease had run out).
    lost: int = 0
    #: Scenarios of the run by claim state, as of the last heartbeat.
    by_state: dict[str, int] = attrs.field(factory=dict)
    #: Workers with a heartbeat within the lease, as of the last heartbeat.
    live_workers: int = 0


async def load_claims(
    store: Store, run_id: str, path: Path, suite: SuiteInfo, epochs: int, chunk: int = 5000
) -> int:
    """Put the scenarios of ``path`` (as ``suite`` selects them) into ``arcflow.claims``, streamed.

    A scenario already there (a run loaded again) is kept as it is.  Returns
    the rows added.
    """
    take = suite.chooser()
    rows: list[tuple[Any, ...]] = []
    added = 0

    def flush_rows() -> list[tuple[Any, ...]]:
        out = rows.copy()
        rows.clear()
        return out

    async def flush(batch: list[tuple[Any, ...]]) -> None:
        nonlocal added
        added += await store.run(_load_aio, batch)

    order = 0
    # Streamed: a chunk of rows at a time goes to the database, so memory stays flat.
    for _lineno, text in iter_lines(path):
        if not text.strip():
            continue
        data = loads(text)
        scenario = Scenario.trusted(
            str(data["id"]),
            data.get("input", {}),
            tuple(data.get("tags", ())),
            data.get("metadata", {}),
            float(data["timeout_s"]) if data.get("timeout_s") is not None else None,
        )
        if take is not None and not take(scenario):
            continue
        body = json.dumps(scenario.to_json(), separators=(",", ":"))
        for epoch in range(1, epochs + 1):
            order += 1
            line = order + (epoch - 1) * 10**12  # epoch-major: every scenario once, then again
            rows.append((run_id, scenario.id, epoch, line, body, scenario.content_hash))
        if len(rows) >= chunk:
            await flush(flush_rows())
    if rows:
        await flush(flush_rows())
    return added


async def _load_aio(conn: Any, rows: list[tuple[Any, ...]]) -> int:
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS arcflow_claims_load "
            "(run_id text, scenario_id text, epoch integer, line bigint, scenario jsonb, "
            "content_hash text) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(
            "arcflow_claims_load",
            records=rows,
            columns=("run_id", "scenario_id", "epoch", "line", "scenario", "content_hash"),
        )
        status = await conn.execute(
            "INSERT INTO arcflow.claims (run_id, scenario_id, epoch, line, scenario, content_hash) "
            "SELECT run_id, scenario_id, epoch, line, scenario, content_hash "
            "FROM arcflow_claims_load ON CONFLICT DO NOTHING"
        )
    return int(status.split()[-1])


def _claim_sql(where: str) -> str:
    """Claim up to $2 rows of run $1 that match ``where``, for worker $3 with a lease of $4 s."""
    return f"""
WITH picked AS (
    SELECT scenario_id, epoch FROM arcflow.claims
    WHERE run_id = $1 AND {where}
    ORDER BY line LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE arcflow.claims c
SET state = 'claimed', worker_id = $3, lease_until = now() + make_interval(secs => $4),
    claim_start = CASE WHEN c.claims = 0 THEN c.claim_start ELSE c.claim_start + {CLAIM_BLOCK} END,
    claims = c.claims + 1
FROM picked p
WHERE c.run_id = $1 AND c.scenario_id = p.scenario_id AND c.epoch = p.epoch
RETURNING c.scenario_id, c.epoch, c.scenario, c.claim_start, c.line
"""


#: Anything claimable: pending, or claimed with its lease run out.  It scans the open claims
#: from the start, so it runs now and then (a dead worker's claims, released ones).
_CLAIM = _claim_sql("(state = 'pending' OR (state = 'claimed' AND lease_until < now()))")

#: Pending claims past line $5, where this worker's last claim ended: the steady path.  It
#: starts in the pending index where it left off, so it does not walk over what the run
#: has already claimed or finished (index entries that only a vacuum removes).
_CLAIM_AHEAD = _claim_sql("state = 'pending' AND line > $5")


#: Seconds of the first wait for other workers' claims; it doubles up to a third of a lease.
_FIRST_POLL = 0.1

#: Claims not done that are not this worker's to finish: pending, or held by another.
_OTHERS_LEFT = """
SELECT count(*) FROM arcflow.claims
WHERE run_id = $1 AND state <> 'done' AND (state = 'pending' OR worker_id IS DISTINCT FROM $2)
"""


async def run_claim_source(
    store: Store,
    run_id: str,
    worker_id: str,
    work: trio.MemorySendChannel[Scenario],
    *,
    lease: float,
    first_attempts: dict[tuple[str, int], int],
    stats: FleetStats,
    chunk: int = 64,
    poll: float | None = None,
    on_submitted: Callable[[int], None] | None = None,
    on_idle: Callable[[], None] | None = None,
) -> None:
    """The source actor of a shared run: claim scenarios and send them on, until the run is done.

    Claims at most as many as the work channel has room for (and at least
    one), so little is held that is not about to run.  When nothing is
    claimable but other workers hold claims, it asks for its own outcomes to be
    written now (``on_idle``) and polls, soon at first and then every ``poll``
    seconds (default: a third of the lease) in case they die; it returns when the
    rest of the run is what this worker holds (its drain writes that).
    Retries transient database errors on the next poll.  Closes ``work``.
    """
    longest = poll if poll is not None else max(0.2, lease / 3)
    wait = _FIRST_POLL
    after = 0  # the line of this worker's last claim
    swept = -math.inf  # when it last looked for expired or released claims
    with work:
        while True:
            queue = work.statistics()
            room = max(1, min(chunk, int(queue.max_buffer_size) - queue.current_buffer_used))
            try:
                rows = []
                if trio.current_time() - swept >= longest:
                    # Now and then, claims that came back (a dead worker's, released ones)
                    # first: they have waited longest.
                    swept = trio.current_time()
                    rows = await store.fetch(_CLAIM, run_id, room, worker_id, lease)
                if not rows:
                    rows = await store.fetch(_CLAIM_AHEAD, run_id, room, worker_id, lease, after)
                if not rows and after:
                    # Nothing ahead: what is left (if anything) is behind the cursor.
                    swept = trio.current_time()
                    rows = await store.fetch(_CLAIM, run_id, room, worker_id, lease)
            except ArcflowError as exc:
                log.warning(
                    "run %s worker %s: claiming failed (%s); trying again", run_id, worker_id, exc
                )
                await trio.sleep(longest)
                continue
            if not rows:
                if on_idle is not None:
                    on_idle()  # what this worker finished is written now, not at a deadline
                try:
                    others = await store.fetchval(_OTHERS_LEFT, run_id, worker_id)
                except ArcflowError:
                    others = 1
                if not others:
                    # Nothing left, or only what this worker holds: its drain finishes that.
                    return
                # Soon at first (the others' last outcomes are being written), then every
                # third of a lease (in case one of them dies and its claims come back).
                await trio.sleep(min(wait, longest))
                wait *= 2
                continue
            wait = _FIRST_POLL
            after = max(after, max(row["line"] for row in rows))
            stats.claimed += len(rows)
            for row in rows:
                data = (
                    loads(row["scenario"]) if isinstance(row["scenario"], str) else row["scenario"]
                )
                scenario = Scenario.trusted(
                    data["id"],
                    data.get("input", {}),
                    tuple(data.get("tags", ())),
                    data.get("metadata", {}),
                    data.get("timeout_s"),
                    row["epoch"],
                )
                first_attempts[(scenario.id, scenario.epoch)] = row["claim_start"]
                await work.send(scenario)
                if on_submitted is not None:
                    on_submitted(1)


_HEARTBEAT = """
WITH mine AS (
    SELECT scenario_id, epoch FROM arcflow.claims
    WHERE run_id = $1 AND worker_id = $2 AND state = 'claimed'
    ORDER BY scenario_id, epoch
    FOR UPDATE
), held AS (
    UPDATE arcflow.claims c SET lease_until = now() + make_interval(secs => $3)
    FROM mine m
    WHERE c.run_id = $1 AND c.scenario_id = m.scenario_id AND c.epoch = m.epoch
      AND c.worker_id = $2 AND c.state = 'claimed'
    RETURNING c.scenario_id, c.epoch
), beat AS (
    UPDATE arcflow.workers SET heartbeat_at = now(), claimed = $4
    WHERE run_id = $1 AND worker_id = $2
)
SELECT scenario_id, epoch FROM held
"""


async def run_heartbeat(
    store: Store,
    run_id: str,
    worker_id: str,
    *,
    lease: float,
    running: Callable[[], dict[tuple[str, int], trio.CancelScope]],
    cancel: Callable[[tuple[str, int], str], None],
    stats: FleetStats,
    on_workers: Callable[[int], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep this worker's leases alive, and stop what it no longer holds.

    Every third of the lease: extend the leases of its claims and read back
    which it still holds; a running scenario it no longer holds is cancelled
    (another worker took it: this one's result would not count).  If no
    heartbeat gets through for a whole lease, every running scenario is
    cancelled: by then its claims may be someone else's.  Retries everything
    on the next beat; runs until cancelled.

    ``on_workers`` hears the number of live workers (this one included) before
    the first scenario and whenever it changes: the executor takes its share
    of limits meant for the whole fleet (see ``Executor.share_limits``).
    """
    await store.fetchval(
        "INSERT INTO arcflow.workers (run_id, worker_id, host, pid) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (run_id, worker_id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL "
        "RETURNING 1",
        run_id,
        worker_id,
        socket.gethostname(),
        os.getpid(),
    )
    stats.live_workers = await _live_workers(store, run_id, lease)
    if on_workers is not None:
        on_workers(stats.live_workers)
    task_status.started()
    last_ok = trio.current_time()
    #: Claims this worker cancelled without losing them (no heartbeat got through): given
    #: back at the next beat that does, so they do not stay held with nothing running them.
    let_go: set[tuple[str, int]] = set()
    while True:
        await trio.sleep(lease / 3)
        # Only what runs before the beat is asked can be judged by its answer: a claim made
        # while the beat is under way may be missing from it and still be this worker's.
        judged = set(running())
        try:
            if let_go:
                await store.fetchval(_LET_GO, run_id, worker_id, *_key_arrays(let_go))
                let_go.clear()
            rows = await store.fetch(_HEARTBEAT, run_id, worker_id, lease, stats.claimed)
            counts = await store.fetch(
                "SELECT state, count(*) AS n FROM arcflow.claims WHERE run_id = $1 GROUP BY state",
                run_id,
            )
            live = await _live_workers(store, run_id, lease)
        except ArcflowError as exc:
            if trio.current_time() - last_ok > lease:
                doomed = running()
                if doomed:
                    log.error(
                        "run %s worker %s: no heartbeat got through for %gs (%s); its claims may "
                        "be taken: cancelling its %d running scenarios",
                        run_id,
                        worker_id,
                        lease,
                        exc,
                        len(doomed),
                    )
                    for key in list(doomed):
                        cancel(key, "no heartbeat got through for a whole lease")
                        let_go.add(key)
            continue
        last_ok = trio.current_time()
        stats.by_state = {r["state"]: r["n"] for r in counts}
        if live != stats.live_workers and on_workers is not None:
            on_workers(live)
        stats.live_workers = live
        held = {(r["scenario_id"], r["epoch"]) for r in rows}
        for key in judged & set(running()):
            if key not in held:
                stats.lost += 1
                log.warning(
                    "run %s worker %s: scenario %s epoch %d was taken by another worker (the "
                    "lease ran out); cancelling it here",
                    run_id,
                    worker_id,
                    key[0],
                    key[1],
                )
                cancel(key, "its claim was taken by another worker after its lease ran out")


async def _live_workers(store: Store, run_id: str, lease: float) -> int:
    """Workers of the run with a heartbeat within the lease (at least 1: the caller)."""
    live = await store.fetchval(
        "SELECT count(*) FROM arcflow.workers WHERE run_id = $1 AND stopped_at IS NULL "
        "AND heartbeat_at > now() - make_interval(secs => $2)",
        run_id,
        lease,
    )
    return max(1, int(live))


#: Give back some of this worker's claims: $3 scenario ids and $4 epochs, paired.
_LET_GO = """
WITH mine AS (
    SELECT c.scenario_id, c.epoch FROM arcflow.claims c
    JOIN unnest($3::text[], $4::integer[]) AS k(scenario_id, epoch)
      ON c.scenario_id = k.scenario_id AND c.epoch = k.epoch
    WHERE c.run_id = $1 AND c.worker_id = $2 AND c.state = 'claimed'
    ORDER BY c.scenario_id, c.epoch
    FOR UPDATE OF c
), released AS (
    UPDATE arcflow.claims c SET state = 'pending', worker_id = NULL, lease_until = NULL
    FROM mine m
    WHERE c.run_id = $1 AND c.scenario_id = m.scenario_id AND c.epoch = m.epoch
    RETURNING 1
)
SELECT count(*) FROM released
"""


def _key_arrays(keys: set[tuple[str, int]]) -> tuple[list[str], list[int]]:
    ordered = sorted(keys)
    return [k[0] for k in ordered], [k[1] for k in ordered]


async def release_claims(store: Store, run_id: str, worker_id: str) -> int:
    """Give back what this worker holds and has not finished; mark it stopped.  Returns how many."""
    status = await store.fetchval(
        """
        WITH mine AS (
            SELECT scenario_id, epoch FROM arcflow.claims
            WHERE run_id = $1 AND worker_id = $2 AND state = 'claimed'
            ORDER BY scenario_id, epoch
            FOR UPDATE
        ), released AS (
            UPDATE arcflow.claims c SET state = 'pending', worker_id = NULL, lease_until = NULL
            FROM mine m
            WHERE c.run_id = $1 AND c.scenario_id = m.scenario_id AND c.epoch = m.epoch
              AND c.worker_id = $2 AND c.state = 'claimed'
            RETURNING 1
        ), stopped AS (
            UPDATE arcflow.workers SET stopped_at = now() WHERE run_id = $1 AND worker_id = $2
        )
        SELECT count(*) FROM released
        """,
        run_id,
        worker_id,
    )
    return int(status)


@attrs.frozen
class WorkerStatus:
    """One worker of a shared run, as ``arcflow.workers`` has it."""

    #: The worker's id (host, pid and a few random characters).
    worker_id: str
    #: The machine it runs on, and its process id there.
    host: str
    pid: int
    #: ``live`` (a heartbeat within the lease), ``stopped`` (it ended and gave its claims
    #: back) or ``lost`` (no heartbeat for a lease: dead, frozen or cut off).
    state: str
    #: Seconds since its last heartbeat.
    heartbeat_age_s: float
    #: Scenarios it claimed, and final outcomes of its that counted.
    claimed: int
    done: int
    #: Claims it holds now.
    holding: int
    #: Seconds from its start to its last heartbeat (or its stop), and ``done`` over them.
    active_s: float = 0.0
    rate_per_s: float | None = None


@attrs.frozen
class FleetStatus:
    """A shared run's workers and claims (``python -m arcflow workers RUN_ID``)."""

    #: The run.
    run_id: str
    #: The lease the run was started with, in seconds.
    lease: float
    #: The run's claims by state (``pending``, ``claimed``, ``done``).
    claims: dict[str, int]
    #: Every worker that joined, the live ones first.
    workers: tuple[WorkerStatus, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return attrs.asdict(self)


async def fleet_status(store: Store, run_id: str) -> FleetStatus:
    """Read a shared run's workers and claims; ConfigError if the run is not shared."""
    run = await store.get_run(run_id)
    config = (run or {}).get("config") or {}
    if isinstance(config, str):
        config = json.loads(config)
    if run is None or not config.get("shared"):
        from .errors import ConfigError

        raise ConfigError(
            f"no shared run {run_id!r} in {store.redacted_dsn} (`python -m arcflow runs` lists "
            "the runs; a shared run is started with `run FILE --shared`)"
        )
    lease = float(config.get("lease", 30.0))
    counts = await store.fetch(
        "SELECT state, count(*) AS n FROM arcflow.claims WHERE run_id = $1 GROUP BY state", run_id
    )
    rows = await store.fetch(
        """
        SELECT w.worker_id, w.host, w.pid, w.claimed, w.done, w.stopped_at IS NOT NULL AS stopped,
               extract(epoch FROM now() - w.heartbeat_at)::float8 AS age,
               extract(epoch FROM coalesce(w.stopped_at, w.heartbeat_at) - w.started_at)::float8
                 AS active,
               (SELECT count(*) FROM arcflow.claims c WHERE c.run_id = w.run_id
                  AND c.worker_id = w.worker_id AND c.state = 'claimed') AS holding
        FROM arcflow.workers w WHERE w.run_id = $1
        ORDER BY w.stopped_at IS NOT NULL, w.heartbeat_at DESC
        """,
        run_id,
    )
    workers = tuple(
        WorkerStatus(
            worker_id=r["worker_id"],
            host=r["host"],
            pid=r["pid"],
            state="stopped" if r["stopped"] else ("live" if r["age"] <= lease else "lost"),
            heartbeat_age_s=round(float(r["age"]), 1),
            claimed=int(r["claimed"]),
            done=int(r["done"]),
            holding=int(r["holding"]),
            active_s=round(max(float(r["active"]), 0.0), 1),
            rate_per_s=round(r["done"] / r["active"], 1) if r["active"] > 0 else None,
        )
        for r in rows
    )
    return FleetStatus(
        run_id=run_id, lease=lease, claims={r["state"]: r["n"] for r in counts}, workers=workers
    )


def format_fleet(status: FleetStatus) -> str:
    """The workers table ``arcflow workers`` prints."""
    claims = status.claims
    total = sum(claims.values())
    lines = [
        f"run {status.run_id}: {claims.get('done', 0)}/{total} done, "
        f"{claims.get('claimed', 0)} claimed, {claims.get('pending', 0)} pending; "
        f"lease {status.lease:g}s",
        "",
        f"{'worker':<34} {'state':<8} {'heartbeat':>10} {'claimed':>8} {'done':>8} {'holding':>8} "
        f"{'done/s':>8}",
    ]
    for w in status.workers:
        rate = "-" if w.rate_per_s is None else f"{w.rate_per_s:.1f}"
        lines.append(
            f"{w.worker_id[:34]:<34} {w.state:<8} {w.heartbeat_age_s:>9.1f}s "
            f"{w.claimed:>8} {w.done:>8} {w.holding:>8} {rate:>8}"
        )
    if not status.workers:
        lines.append("(no worker has joined)")
    return "\n".join(lines) + "\n"


async def shared_run_status(store: Store, run_id: str) -> str:
    """How a shared run stands when one of its workers ends: ``finished`` once every claim is done.

    Otherwise ``running``: other workers go on, or a worker started later will.
    """
    try:
        left = await store.fetchval(
            "SELECT count(*) FROM arcflow.claims WHERE run_id = $1 AND state <> 'done'", run_id
        )
    except ArcflowError:
        return "running"
    return "finished" if not left else "running"


async def adopt_orphan_journals(
    store: Store, run_id: str, own_journal: Path, config: Any, *, own: str
) -> int:
    """Replay the spill journals that dead workers of this run left on this machine.

    A journal is a dead worker's when its lock file can be locked (a live
    worker holds its own).  Its batches are written fenced by that worker's
    claims, so its final outcomes count only where its claims were not taken
    since; then the journal is deleted.  Returns the outcomes replayed.
    """
    import fcntl

    from .breaker import CircuitBreaker
    from .journal import SpillJournal
    from .writer import Writer

    folder = own_journal.parent
    replayed = 0
    if not folder.is_dir():
        return 0
    for path in sorted(folder.glob(f"{run_id}.*.journal")):
        worker = path.name[len(run_id) + 1 : -len(".journal")]
        if worker == own:
            continue
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker's
            journal = SpillJournal(path)
            await journal.open()
            if journal.pending_batches:
                writer = Writer(
                    [store],
                    journal,
                    CircuitBreaker(config.breaker, name=f"run {run_id}"),
                    run_id=run_id,
                    retry=config.retry,
                    worker_id=worker,
                )
                before = writer.stats.replayed_outcomes
                if not await writer.replay():
                    log.warning(
                        "run %s: could not replay the journal of dead worker %s (%s) now; "
                        "the next worker on this machine tries again",
                        run_id,
                        worker,
                        path,
                    )
                    continue
                replayed += writer.stats.replayed_outcomes - before
                log.warning(
                    "run %s: replayed %d outcomes from the journal of dead worker %s",
                    run_id,
                    writer.stats.replayed_outcomes - before,
                    worker,
                )
            path.unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return replayed
