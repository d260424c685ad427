"""The spill journal: batches the database could not take, kept on disk until it can.

File format, append-only, one entry per batch::

    b"AFJ1" | length: u32 big-endian | crc32(payload): u32 big-endian | payload

``payload`` is UTF-8 JSON ``{"batch_id", "reason", "outcomes": [...]}``.  Each
append is fsync'd before it counts as spilled.  On open, entries are checked
in order; the first one that is short or fails its checksum marks a torn tail
(a crash mid-write): the bytes from there on are moved to a ``.torn-N`` file
beside the journal and the journal is cut there, so nothing is misread and
nothing is silently deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio

from .errors import DataDirError
from .models import Batch, FlushReason, Outcome, new_batch_id
from .poison import output_problem, safe_repr

log = logging.getLogger("arcflow.journal")

MAGIC = b"AFJ1"
_HEADER = struct.Struct(">4sII")


def encode_entry(batch: Batch) -> bytes:
    """The bytes of one journal entry for ``batch``.

    An outcome whose output JSON cannot encode (only a ``record()``-ed outcome
    can have one; producers check theirs) is kept as an ``error`` outcome
    saying why, so that one bad record never stops a batch from being spilled.
    """
    body: dict[str, Any] = {"batch_id": batch.id, "reason": batch.reason.value, "outcomes": None}
    try:
        body["outcomes"] = [o.to_json() for o in batch.outcomes]
        text = json.dumps(body, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError, OverflowError):
        body["outcomes"] = [_encodable(o) for o in batch.outcomes]
        text = json.dumps(body, separators=(",", ":"))
    payload = text.encode("utf-8", "surrogatepass")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def _encodable(outcome: Outcome) -> dict[str, object]:
    """``outcome.to_json()``, or, if its output cannot be encoded, an error outcome saying so."""
    data = outcome.to_json()
    try:
        json.dumps(data, separators=(",", ":"))
        return data
    except (TypeError, ValueError, RecursionError, OverflowError):
        pass
    problem = output_problem(outcome.output) or "the outcome cannot be encoded as JSON"
    data.update(
        status="error",
        output=None,
        error_type="InvalidOutput",
        error_message=problem,
        executor={"unencodable": safe_repr(dict(outcome.executor))},
    )
    return data


def decode_payload(payload: bytes) -> Batch:
    data = json.loads(payload.decode("utf-8", "surrogatepass"))
    return Batch(
        id=data["batch_id"],
        outcomes=tuple(Outcome.from_json(o) for o in data["outcomes"]),
        reason=FlushReason(data["reason"]),
    )


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if need be; the folder itself is 0700.

    Journals hold outcome data: only their owner may list or read them.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.geteuid():
        path.chmod(0o700)


def scan(path: Path) -> tuple[list[tuple[int, int]], int, int]:
    """Valid entries of a journal file as (offset, length) pairs, the valid size, the file size."""
    entries: list[tuple[int, int]] = []
    if not path.exists():
        return entries, 0, 0
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as f:
        while offset + _HEADER.size <= size:
            f.seek(offset)
            magic, length, crc = _HEADER.unpack(f.read(_HEADER.size))
            if magic != MAGIC or offset + _HEADER.size + length > size:
                break
            payload = f.read(length)
            if zlib.crc32(payload) != crc:
                break
            entries.append((offset + _HEADER.size, length))
            offset += _HEADER.size + length
    return entries, offset, size


class SpillJournal:
    """One run's journal file, and the only code that writes it.

    Every append goes through :meth:`append`, which keeps the index of
    entries; appends and clears are serialized by a lock of the journal's
    own, so any task may append (the writer spilling a batch, an actor
    salvaging what it holds on its way out) and none can lose another's entry.
    :meth:`clear` drops only the entries a replay has written: an entry
    appended meanwhile stays.
    """

    def __init__(self, path: Path | str, *, max_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._entries: list[tuple[int, int]] = []
        self.size = 0
        #: Bytes cut from a torn tail when the journal was opened.
        self.torn_bytes = 0
        #: Outcomes a salvage could not put here (the disk refused): lost, and the run failed.
        self.lost_outcomes = 0
        self._lock = trio.Lock()

    @property
    def pending_batches(self) -> int:
        """Batches in the journal not yet replayed."""
        return len(self._entries)

    @property
    def full(self) -> bool:
        """At or past the size cap: the writer stops pulling new batches."""
        return self.size >= self.max_bytes

    async def open(self) -> None:
        """Check the file, cut a torn tail, and index its entries.

        Raises :class:`DataDirError` if the folder or the file cannot be used.
        A torn tail is cut only once its copy is safely on disk.
        """
        async with self._lock:
            try:
                await trio.to_thread.run_sync(self._open_blocking)
            except OSError as exc:
                raise DataDirError(
                    f"cannot use the spill journal {self.path}: {exc.strerror or exc}; "
                    "make its folder writable, free space, or choose another --data-dir"
                ) from None

    def _open_blocking(self) -> None:
        make_private_dir(self.path.parent)
        entries, valid, size = scan(self.path)
        if valid < size:
            self.torn_bytes = size - valid
            keep = self.path.with_name(f"{self.path.name}.torn-{os.getpid()}-{valid}")
            fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with self.path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                src.seek(valid)
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            with self.path.open("r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
            log.warning(
                "spill journal %s: torn tail of %d bytes cut at offset %d (kept in %s)",
                self.path,
                self.torn_bytes,
                valid,
                keep,
            )
        self._entries = entries
        self.size = valid

    async def append(self, batch: Batch) -> None:
        """Append ``batch`` and fsync; when this returns the batch is durable.

        A write that fails part-way is cut back off the file before the error
        propagates, so the journal never holds a partial entry followed by a
        valid one.
        """
        data = encode_entry(batch)
        async with self._lock:
            offset = self.size
            await trio.to_thread.run_sync(self._append_blocking, data, offset)
            self._entries.append((offset + _HEADER.size, len(data) - _HEADER.size))
            self.size = offset + len(data)

    def _append_blocking(self, data: bytes, offset: int) -> None:
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, offset)
                    os.fsync(fd)
                except OSError as exc:  # pragma: no cover - the disk refuses even that
                    log.error("spill journal %s: could not cut a partial write: %s", self.path, exc)
                raise
        finally:
            os.close(fd)

    async def batches(self, limit: int | None = None) -> AsyncIterator[Batch]:
        """Yield the journal's batches in order (the first ``limit``), reading one at a time."""
        for offset, length in self._entries[:limit]:
            payload = await trio.to_thread.run_sync(self._read_blocking, offset, length)
            yield decode_payload(payload)

    def _read_blocking(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    async def clear(self, count: int | None = None) -> None:
        """Drop the first ``count`` entries (default all), durably, after a replay wrote them.

        Entries appended after those stay, in order.
        """
        async with self._lock:
            count = len(self._entries) if count is None else min(count, len(self._entries))
            if count == 0:
                return
            if count == len(self._entries):
                await trio.to_thread.run_sync(self._truncate_blocking)
                self._entries = []
                self.size = 0
                return
            keep_from = self._entries[count][0] - _HEADER.size
            await trio.to_thread.run_sync(self._keep_tail_blocking, keep_from)
            self._entries = [(o - keep_from, n) for o, n in self._entries[count:]]
            self.size -= keep_from

    def _truncate_blocking(self) -> None:
        if self.path.exists():
            with self.path.open("r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())

    def _keep_tail_blocking(self, keep_from: int) -> None:
        """Replace the file by its bytes from ``keep_from`` on, atomically."""
        tmp = self.path.with_name(f"{self.path.name}.compact-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with self.path.open("rb") as src, os.fdopen(fd, "wb") as dst:
            src.seek(keep_from)
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


async def salvage(
    journal: SpillJournal, outcomes: Sequence[Outcome], *, who: str, limit_s: float
) -> None:
    """Last resort on an actor's way out: append what it holds to the journal, shielded.

    For an actor ending by failure or cancellation with outcomes that would
    otherwise be lost; the next runtime with this run id replays them.
    Bounded by ``limit_s`` seconds; a failure is logged as critical (there is no
    other place left to put them) and not raised, so it cannot mask the
    exception the actor is leaving with.
    """
    if not outcomes:
        return
    batch = Batch(new_batch_id(), tuple(outcomes), FlushReason.SHUTDOWN)
    with trio.move_on_after(limit_s, shield=True) as scope:
        try:
            await journal.append(batch)
        except Exception as exc:
            journal.lost_outcomes += len(outcomes)
            log.critical(
                "%s: could not salvage %d outcomes into %s: %s: %s",
                who,
                len(outcomes),
                journal.path,
                type(exc).__name__,
                exc,
            )
            return
    if scope.cancelled_caught:
        journal.lost_outcomes += len(outcomes)
        log.critical(
            "%s: salvaging %d outcomes into %s took over %gs; they are lost",
            who,
            len(outcomes),
            journal.path,
            limit_s,
        )
        return
    log.error("%s: salvaged %d outcomes into %s", who, len(outcomes), journal.path)
