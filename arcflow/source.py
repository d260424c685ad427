"""The source actor: scenarios from a JSONL file into the work channel."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import trio

from .models import Scenario
from .scenarios import iter_file
from .stats import Counters

_CHUNK = 512
#: Longest the source hands over scenarios before it lets other tasks run.
_SLICE_S = 0.0003


def _take(it: Iterator[tuple[int, Scenario]], n: int) -> list[Scenario]:
    return [s for _line, s in itertools.islice(it, n)]


async def run_file_source(
    path: Path | str,
    work: trio.MemorySendChannel[Scenario],
    *,
    skip: Callable[[Scenario], bool] | None = None,
    counters: Counters | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Stream ``path`` into ``work``, skipping scenarios for which ``skip`` is true.

    The file is read and parsed in a worker thread, a chunk at a time, so the
    event loop never blocks on disk; ``work.send`` blocks under backpressure,
    and then the file is not read further.  Cancel it to stop reading early.

    Retries nothing; a file that became invalid since it was validated raises
    :class:`ScenarioFileError`.  Closes ``work`` (its send end) when it returns.
    """
    counters = counters if counters is not None else Counters()
    with work:
        task_status.started()
        lines = iter_file(path)
        while True:
            chunk = await trio.to_thread.run_sync(_take, lines, _CHUNK)
            if not chunk:
                return
            step_started = time.perf_counter()
            for scenario in chunk:
                if skip is not None and skip(scenario):
                    continue
                # Hand over without a trip through the scheduler while there is room;
                # await only when the channel is full, or now and then so that this
                # task never holds the thread for long.
                try:
                    work.send_nowait(scenario)
                except trio.WouldBlock:
                    await work.send(scenario)
                    step_started = time.perf_counter()
                else:
                    if time.perf_counter() - step_started > _SLICE_S:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        step_started = time.perf_counter()
                counters.submitted += 1
