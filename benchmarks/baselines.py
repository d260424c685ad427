"""The baselines arcflow is measured against, written plainly.

Each one writes the same row per outcome into ``arcflow.outcomes`` as arcflow
does (see :mod:`benchmarks.workloads`) and runs on a standard asyncio event
loop (``asyncio.SelectorEventLoop``; not trio-asyncio's), with asyncpg:

* :func:`per_record_insert` -- the seed's "before": run a scenario, then one
  ``INSERT`` for its outcome, one at a time, on one connection (autocommit).
* :class:`AsyncioBatcher` -- the obvious hand-written batcher: worker tasks
  run scenarios and put rows on an ``asyncio.Queue``; one task takes them and
  ``executemany``'s every ``batch_size`` rows or ``flush_interval`` seconds,
  in a transaction; a failed write is retried (reconnecting) until it works.
* :func:`raw_copy` -- the ceiling: ``copy_records_to_table`` of rows built
  beforehand, in batches of the same size; no scenarios, no runtime at all
  (one connection; the ingest benchmark also reports it over two).

Run the batcher on a scenario file in a process of its own (the memory
benchmark does)::

    python -m benchmarks.baselines asyncio-batcher FILE --db DSN [--batch-size N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg

from .workloads import COLUMNS, INSERT_SQL, content_hash, iter_jsonl, now, outcome_row


def run_asyncio(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on a fresh standard asyncio loop (even after trio-asyncio was imported)."""
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


# -- per-record INSERT ----------------------------------------------------------------------------


async def per_record_insert(
    dsn: str,
    items: Iterable[dict[str, Any]],
    *,
    run_id: str,
    work: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run each scenario, then INSERT its outcome: one statement (and transaction) per record."""
    conn = await asyncpg.connect(dsn)
    try:
        n = 0
        t0 = time.perf_counter()
        for data in items:
            started = now()
            if work is not None:
                await work(data)
            row = outcome_row(run_id, data, started, now(), "worker-0", "none")
            await conn.execute(INSERT_SQL, *row)
            n += 1
        elapsed = time.perf_counter() - t0
    finally:
        await conn.close()
    return {"records": n, "elapsed_s": elapsed}


# -- hand-written asyncio batcher -----------------------------------------------------------------


async def _noop(data: dict[str, Any]) -> None:
    return None


async def sleep_work(data: dict[str, Any]) -> None:
    await asyncio.sleep(float(data["input"].get("sleep", 0)))


class AsyncioBatcher:
    """Workers -> asyncio.Queue -> one flusher that executemany's every N rows or T seconds."""

    def __init__(
        self,
        dsn: str,
        *,
        run_id: str,
        batch_size: int,
        flush_interval: float,
        concurrency: int,
        work: Callable[[dict[str, Any]], Awaitable[None]] = _noop,
        record_times: bool = False,
    ) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.concurrency = concurrency
        self.work = work
        self.completed = 0
        self.written = 0
        self.transactions = 0
        self.failed_writes = 0
        self.last_commit = 0.0
        #: Start and end of every scenario (perf_counter), when ``record_times`` (latency benchmark).
        self.record_times = record_times
        self.starts: list[float] = []
        self.ends: list[float] = []

    async def run(
        self, items: Iterable[dict[str, Any]] | AsyncIterator[dict[str, Any]]
    ) -> dict[str, Any]:
        conn: asyncpg.Connection | None = await asyncpg.connect(self.dsn)
        todo: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=2 * self.concurrency)
        rows: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue(maxsize=self.batch_size)

        async def worker(name: str) -> None:
            while True:
                data = await todo.get()
                if data is None:
                    return
                started = now()
                if self.record_times:
                    self.starts.append(time.perf_counter())
                await self.work(data)
                if self.record_times:
                    self.ends.append(time.perf_counter())
                digest = content_hash(data)
                await rows.put(
                    outcome_row(self.run_id, data, started, now(), name, "", scenario_hash=digest)
                )
                self.completed += 1

        async def write(batch: list[tuple[Any, ...]]) -> None:
            nonlocal conn
            batch_id = uuid.uuid4().hex[:16]
            batch = [
                (*row[:-3], batch_id, *row[-2:]) for row in batch
            ]  # COLUMNS end with batch_id, usage, tags
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.dsn, timeout=5)
                    async with conn.transaction():
                        await conn.executemany(INSERT_SQL, batch)
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                    self.failed_writes += 1
                    if conn is not None:
                        conn.terminate()
                    conn = None
                    await asyncio.sleep(0.5)
            self.transactions += 1
            self.written += len(batch)
            self.last_commit = time.perf_counter()

        async def flusher() -> None:
            loop = asyncio.get_running_loop()
            batch: list[tuple[Any, ...]] = []
            deadline = 0.0
            while True:
                if not batch:
                    row = await rows.get()
                    if row is None:
                        return
                    batch.append(row)
                    deadline = loop.time() + self.flush_interval
                # take what is already queued, then wait for more until the deadline
                while len(batch) < self.batch_size:
                    try:
                        row = rows.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if row is None:
                        await write(batch)
                        return
                    batch.append(row)
                if len(batch) < self.batch_size:
                    try:
                        row = await asyncio.wait_for(rows.get(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        pass
                    else:
                        if row is None:
                            await write(batch)
                            return
                        batch.append(row)
                        continue
                await write(batch)
                batch = []

        t0 = time.perf_counter()
        flush_task = asyncio.create_task(flusher())
        workers = [asyncio.create_task(worker(f"worker-{i}")) for i in range(self.concurrency)]
        try:
            if isinstance(items, AsyncIterator):
                async for data in items:
                    await todo.put(data)
            else:
                for data in items:
                    await todo.put(data)
            for _ in workers:
                await todo.put(None)
            await asyncio.gather(*workers)
            await rows.put(None)
            await flush_task
        finally:
            for task in [*workers, flush_task]:
                task.cancel()
            if conn is not None:
                await conn.close()
        return {
            "records": self.written,
            "elapsed_s": self.last_commit - t0,
            "transactions": self.transactions,
            "failed_writes": self.failed_writes,
        }


# -- raw COPY ceiling -------------------------------------------------------------------------------


async def raw_copy(
    dsn: str, records: list[tuple[Any, ...]], *, batch_size: int, connections: int = 1
) -> dict[str, Any]:
    """COPY pre-built rows straight into arcflow.outcomes, ``batch_size`` rows per COPY.

    With ``connections > 1`` each connection takes the next chunk as soon as its
    last COPY committed, so one commit's fsync overlaps another's COPY (as
    arcflow's writer lanes do).
    """
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]
    starts = iter(range(0, len(records), batch_size))

    async def lane(conn: asyncpg.Connection) -> None:
        for i in starts:
            await conn.copy_records_to_table(
                "outcomes",
                schema_name="arcflow",
                records=records[i : i + batch_size],
                columns=COLUMNS,
            )

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(lane(c) for c in conns))
        elapsed = time.perf_counter() - t0
    finally:
        for conn in conns:
            await conn.close()
    return {"records": len(records), "elapsed_s": elapsed}


def prebuilt_rows(run_id: str, items: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows raw COPY writes, built before the clock starts."""
    t = now()
    return [outcome_row(run_id, data, t, t, "worker-0", "copy") for data in items]


# -- a process of its own (memory benchmark) --------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    parser.add_argument("which", choices=["asyncio-batcher"])
    parser.add_argument("scenarios", type=Path)
    parser.add_argument("--db", required=True)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--flush-interval", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--run-id", default=None)
    parser.add_argument(
        "--sleep", action="store_true", help="each scenario sleeps input.sleep seconds (asyncio)"
    )
    args = parser.parse_args(argv)
    batcher = AsyncioBatcher(
        args.db,
        run_id=args.run_id or "mem-" + uuid.uuid4().hex[:8],
        batch_size=args.batch_size,
        flush_interval=args.flush_interval,
        concurrency=args.concurrency,
        work=sleep_work if args.sleep else _noop,
    )
    result = run_asyncio(batcher.run(iter_jsonl(args.scenarios)))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
