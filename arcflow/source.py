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
from .scenarios import FileDigest, SuiteInfo, loads, parse_line
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

    def __init__(self, path: Path, expect: SuiteInfo | None = None) -> None:
        self.path = path
        self.expect = expect
        self._digest = FileDigest()
        self._grown = False
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
            size = _READ_SIZE
            if self.expect is not None:  # never read past what was checked
                size = min(size, self.expect.size - self._digest.size) or 1
            data = await trio.to_thread.run_sync(self._file.read, size)
            if self.expect is not None and data and self._digest.size >= self.expect.size:
                data = b""  # the checked part ends here; what follows was added since
                self._grown = True
            self._digest.update(data)
            self._eof = not data
            if self._eof:
                self._check_unchanged()
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
        if self._grown:
            raise ScenarioFileError(
                self.path,
                self._lineno + 1,
                "this line was added after the file was checked, so it is not run; "
                "the scenarios before it are recorded (put new scenarios in a file of their own)",
            )
        return []

    def _check_unchanged(self) -> None:
        """At the end: the bytes read are those that were checked."""
        expect = self.expect
        if expect is None or self._digest.hexdigest() == expect.sha256:
            return
        raise ScenarioFileError(
            self.path,
            None,
            f"the file changed while the run read it ({self._digest.size} bytes now, "
            f"{expect.size} when checked); the scenarios read are recorded, but a changed "
            "scenario may have run as it is now: check the file and run again with --resume",
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def run_file_source(
    path: Path | str,
    work: trio.MemorySendChannel[Scenario],
    *,
    skip: Callable[[Scenario], bool] | None = None,
    stats: IntakeStats | None = None,
    expect: SuiteInfo | None = None,
    epochs: int = 1,
) -> None:
    """Stream ``path`` into ``work``, skipping scenarios for which ``skip`` is true.

    With ``epochs`` K, the file is streamed K times: every scenario as epoch 1,
    then every one as epoch 2, and so on (``skip`` sees each repeat).

    The file is read in a worker thread, a quarter MiB at a time, so the event
    loop never blocks on disk; ``work.send`` blocks under backpressure, and then
    the file is not read further.  Lines are parsed in slices of at most
    ``_SLICE_S`` seconds between checkpoints.  Cancel it to stop reading early.

    Retries nothing; a file that became invalid since it was validated raises
    :class:`ScenarioFileError` (same checks and messages as ``iter_file``).
    With ``expect`` (what :func:`validate_file` returned), nothing past the
    checked bytes is run: a line added since is an error naming its line, and
    a file whose bytes changed is an error at the end.
    Closes ``work`` (its send end) when it returns.
    """
    path = Path(path)
    stats = stats if stats is not None else IntakeStats()
    with work:
        for epoch in range(1, epochs + 1):
            reader = _LineReader(path, expect)
            try:
                await _feed(reader, work, skip, stats, epoch)
            finally:
                reader.close()


def _checked_scenario(text: str, path: Path, lineno: int) -> Scenario | None:
    """A line of a file validate_file has checked: decoded and built, not checked again."""
    if not text or text.isspace():
        return None
    try:
        data = loads(text)
        sid = data["id"]
        timeout = data.get("timeout_s")
        return Scenario.trusted(
            sid if type(sid) is str else str(sid),
            data.get("input", {}),
            tuple(data.get("tags", ())),
            data.get("metadata", {}),
            float(timeout) if timeout is not None else None,
        )
    except Exception:
        # Not what was checked after all (the file changed): say exactly what is wrong.
        return parse_line(text, path, lineno)


async def _feed(
    reader: _LineReader,
    work: trio.MemorySendChannel[Scenario],
    skip: Callable[[Scenario], bool] | None,
    stats: IntakeStats,
    epoch: int = 1,
) -> None:
    path = reader.path
    # A file checked by validate_file (expect given) is parsed without checking again:
    # its bytes are verified against the check as they are read.
    build = _checked_scenario if reader.expect is not None else parse_line
    take = reader.expect.chooser() if reader.expect is not None else None
    while lines := await reader.read():
        step_started = time.perf_counter()
        for lineno, text in lines:
            scenario = build(text, path, lineno)
            if scenario is None:
                continue
            if take is not None and not take(scenario):
                continue  # not in the run's selection
            if epoch != 1:
                scenario = scenario.repeat(epoch)
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
