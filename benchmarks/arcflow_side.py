"""arcflow under test: the real pipeline (``arcflow.Runtime``), driven the way a user would.

Each call is one ``trio.run``: a Runtime with the ``python:`` executor
(:class:`arcflow.PythonExecutor` over an async function) writes to the
benchmark database.  The clock starts when the first scenario is handed over
(the runtime is already connected, as the baselines are) and stops when the
last batch has committed (the ``on_batch_written`` hook), like the baselines'.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

import arcflow
from arcflow import PythonExecutor, Scenario

from . import workloads


class _Clock:
    def __init__(self) -> None:
        self.last_commit = 0.0
        self.batches = 0
        self.commit_times: list[tuple[float, int]] = []

    def on_batch_written(self, batch: arcflow.Batch, inserted: int, latency: float) -> None:
        self.last_commit = time.perf_counter()
        self.batches += 1
        self.commit_times.append((self.last_commit, len(batch)))


async def feed(rt: arcflow.Runtime, scenarios: Sequence[Scenario]) -> None:
    """Hand scenarios over as an embedding service would: without waiting while there is room."""
    for scenario in scenarios:
        try:
            rt.submit_nowait(scenario)
        except trio.WouldBlock:
            await rt.submit(scenario)


def run(
    dsn: str,
    *,
    scenarios: Sequence[Scenario] = (),
    path: Path | None = None,
    function: Callable[[Scenario], Awaitable[Any]] = workloads.noop,
    batch_size: int,
    concurrency: int,
    flush_interval: float = 30.0,
    run_id: str | None = None,
    plain_submit: bool = False,
    during: Callable[[arcflow.Runtime], Awaitable[None]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run ``scenarios`` (or the JSONL file ``path``) through arcflow; returns timings and stats.

    ``during(rt)``, if given, runs alongside the feeding (monitors, trickle feeders).
    """
    clock = _Clock()
    result: dict[str, Any] = {}

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="arcflow-bench-") as data_dir:
            rt = arcflow.Runtime(
                executor=PythonExecutor(
                    function, name=f"benchmarks.workloads:{getattr(function, '__name__', 'fn')}"
                ),
                db=dsn,
                run_id=run_id,
                batch_size=batch_size,
                concurrency=concurrency,
                flush_interval=flush_interval,
                data_dir=Path(data_dir),
                on_batch_written=clock.on_batch_written,
                **options,
            )
            async with rt:
                t0 = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    if during is not None:
                        nursery.start_soon(during, rt)
                    if path is not None:
                        await rt.run_file(path)
                    elif plain_submit:
                        for scenario in scenarios:
                            await rt.submit(scenario)
                    else:
                        await feed(rt, scenarios)
                fed = time.perf_counter()
            t_end = time.perf_counter()
            stats = rt.statistics()
            result.update(
                run_id=rt.run_id,
                records=stats.written,
                elapsed_s=(clock.last_commit or t_end) - t0,
                wall_s=t_end - t0,
                fed_s=fed - t0,
                batches=clock.batches,
                write_transactions=stats.write_transactions,
                by_flush_reason=dict(stats.by_flush_reason),
                completed=stats.completed,
                spilled_outcomes=stats.spilled_outcomes,
                replayed_outcomes=stats.replayed_outcomes,
                retries=stats.retries,
                breaker_transitions=dict(stats.breaker_transitions),
                commit_times=[(t - t0, n) for t, n in clock.commit_times],
            )

    trio.run(main)
    return result
