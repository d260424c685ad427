"""The source actor: scenarios from a JSONL file into the work channel."""

from __future__ import annotations

import codecs
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import trio

from .errors import ScenarioFileError
from .models import Scenario
from .scenarios import parse_line
from .stats import IntakeStats

#: Bytes read from the file per trip to a worker thread.
_READ_SIZE = 1 << 18
#: Longest the source parses and hands over scenarios before it lets other tasks run.
_SLICE_S = 0.0003


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ScenarioFileError(path, None, "no such file") from None
    except OSError as exc:
        raise ScenarioFileError(path, None, f"cannot read: {exc.strerror or exc}") from None


class _LineReader:
    """Lines of a file as reading it in text mode would give them, a chunk at a time.

    The bytes are read in a worker thread, so the event loop never waits on the
    disk; they are decoded here (UTF-8, universal newlines), so that parsing
    does not run in a thread that would contend with the event loop for the GIL.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._decoder = io.IncrementalNewlineDecoder(
            codecs.getincrementaldecoder("utf-8")(), translate=True
        )
        self._lineno = 0
        self._pending = ""
        self._eof = False

    async def read(self) -> list[tuple[int, str]]:
        """The next complete lines as (line number, text without newline); [] at the end."""
        if self._file is None:
            self._file = await trio.to_thread.run_sync(_open, self.path)
        while not self._eof:
            data = await trio.to_thread.run_sync(self._file.read, _READ_SIZE)
            self._eof = not data
            try:
                text = self._decoder.decode(data, final=self._eof)
            except UnicodeDecodeError as exc:
                line = self._lineno + data[: max(exc.start, 0)].count(b"\n") + 1
                raise ScenarioFileError(self.path, line, f"not UTF-8 text: {exc.reason}") from None
            *complete, self._pending = (self._pending + text).split("\n")
            if self._eof and self._pending:
                complete.append(self._pending)
                self._pending = ""
            if complete:
                first = self._lineno + 1
                self._lineno += len(complete)
                return list(zip(range(first, first + len(complete)), complete, strict=True))
        return []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def run_file_source(
    path: Path | str,
    work: trio.MemorySendChannel[Scenario],
    *,
    skip: Callable[[Scenario], bool] | None = None,
    stats: IntakeStats | None = None,
) -> None:
    """Stream ``path`` into ``work``, skipping scenarios for which ``skip`` is true.

    The file is read in a worker thread, a quarter MiB at a time, so the event
    loop never blocks on disk; ``work.send`` blocks under backpressure, and then
    the file is not read further.  Lines are parsed in slices of at most
    ``_SLICE_S`` seconds between checkpoints.  Cancel it to stop reading early.

    Retries nothing; a file that became invalid since it was validated raises
    :class:`ScenarioFileError` (same checks and messages as ``iter_file``).
    Closes ``work`` (its send end) when it returns.
    """
    path = Path(path)
    stats = stats if stats is not None else IntakeStats()
    with work:
        reader = _LineReader(path)
        try:
            await _feed(reader, work, skip, stats)
        finally:
            reader.close()


async def _feed(
    reader: _LineReader,
    work: trio.MemorySendChannel[Scenario],
    skip: Callable[[Scenario], bool] | None,
    stats: IntakeStats,
) -> None:
    path = reader.path
    while lines := await reader.read():
        step_started = time.perf_counter()
        for lineno, text in lines:
            scenario = parse_line(text, path, lineno)
            if scenario is None:
                continue
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
                    await trio.lowlevel.checkpoint()
                    step_started = time.perf_counter()
            stats.submitted += 1
