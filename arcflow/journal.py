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
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from .models import Batch, FlushReason, Outcome

log = logging.getLogger("arcflow.journal")

MAGIC = b"AFJ1"
_HEADER = struct.Struct(">4sII")


def encode_entry(batch: Batch) -> bytes:
    """The bytes of one journal entry for ``batch``."""
    payload = json.dumps(
        {
            "batch_id": batch.id,
            "reason": batch.reason.value,
            "outcomes": [o.to_json() for o in batch.outcomes],
        },
        separators=(",", ":"),
    ).encode()
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> Batch:
    data = json.loads(payload)
    return Batch(
        id=data["batch_id"],
        outcomes=tuple(Outcome.from_json(o) for o in data["outcomes"]),
        reason=FlushReason(data["reason"]),
    )


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
    """One run's journal file.  Use from one task at a time (the writer)."""

    def __init__(self, path: Path | str, *, max_bytes: int = 1 << 30) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._entries: list[tuple[int, int]] = []
        self._outcomes = 0
        self.size = 0
        #: Bytes cut from a torn tail when the journal was opened.
        self.torn_bytes = 0
        self._opened = False

    @property
    def pending_batches(self) -> int:
        """Batches in the journal not yet replayed."""
        return len(self._entries)

    @property
    def full(self) -> bool:
        """At or past the size cap: the writer stops pulling new batches."""
        return self.size >= self.max_bytes

    async def open(self) -> None:
        """Check the file, cut a torn tail, and index its entries."""
        await trio.to_thread.run_sync(self._open_blocking)

    def _open_blocking(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries, valid, size = scan(self.path)
        if valid < size:
            self.torn_bytes = size - valid
            keep = self.path.with_name(f"{self.path.name}.torn-{os.getpid()}-{valid}")
            with self.path.open("rb") as src, keep.open("wb") as dst:
                src.seek(valid)
                dst.write(src.read())
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
        self._opened = True

    async def append(self, batch: Batch) -> None:
        """Append ``batch`` and fsync; when this returns the batch is durable."""
        data = encode_entry(batch)
        await trio.to_thread.run_sync(self._append_blocking, data)
        self._entries.append((self.size + _HEADER.size, len(data) - _HEADER.size))
        self.size += len(data)

    def _append_blocking(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    async def batches(self) -> AsyncIterator[Batch]:
        """Yield the journal's batches in order, reading one entry at a time."""
        for offset, length in list(self._entries):
            payload = await trio.to_thread.run_sync(self._read_blocking, offset, length)
            yield decode_payload(payload)

    def _read_blocking(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    async def clear(self) -> None:
        """Empty the journal (after every entry was replayed), durably."""
        await trio.to_thread.run_sync(self._clear_blocking)
        self._entries = []
        self.size = 0

    def _clear_blocking(self) -> None:
        if self.path.exists():
            with self.path.open("r+b") as f:
                f.truncate(0)
                f.flush()
                os.fsync(f.fileno())
