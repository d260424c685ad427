"""The spill journal: durable appends, ordered replay, torn tails detected and cut."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import json_values, outcome

from arcflow.journal import SpillJournal, encode_entry, scan
from arcflow.models import Batch, FlushReason


def batch(i: int, n: int = 3, **fields: object) -> Batch:
    return Batch(f"b{i}", tuple(outcome(i * 100 + k, **fields) for k in range(n)), FlushReason.SIZE)


async def read_all(journal: SpillJournal) -> list[Batch]:
    return [b async for b in journal.batches()]


async def test_append_and_replay_in_order(tmp_path: Path) -> None:
    """Batches come back in append order with every field intact, also after reopening."""
    j = SpillJournal(tmp_path / "r.journal")
    await j.open()
    batches = [batch(i, output={"text": "nul\x00inside", "i": i}) for i in range(4)]
    for b in batches:
        await j.append(b)
    assert j.pending_batches == 4
    again = SpillJournal(tmp_path / "r.journal")
    await again.open()
    got = await read_all(again)
    assert [b.id for b in got] == ["b0", "b1", "b2", "b3"]
    assert [o.to_json() for b in got for o in b.outcomes] == [
        o.to_json() for b in batches for o in b.outcomes
    ]
    await again.clear()
    assert again.pending_batches == 0 and (tmp_path / "r.journal").stat().st_size == 0


async def test_torn_tail_is_cut_and_kept_aside(tmp_path: Path) -> None:
    """A half-written last entry is detected, cut off, and saved beside the journal."""
    path = tmp_path / "r.journal"
    j = SpillJournal(path)
    await j.open()
    await j.append(batch(0))
    await j.append(batch(1))
    good_size = path.stat().st_size
    torn = encode_entry(batch(2))[:-7]
    with path.open("ab") as f:
        f.write(torn)
    reopened = SpillJournal(path)
    await reopened.open()
    assert reopened.torn_bytes == len(torn)
    assert path.stat().st_size == good_size
    assert [b.id for b in await read_all(reopened)] == ["b0", "b1"]
    kept = list(tmp_path.glob("r.journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn


async def test_corrupt_entry_is_never_misread(tmp_path: Path) -> None:
    """A flipped byte fails the checksum: that entry and the rest are cut, earlier ones kept."""
    path = tmp_path / "r.journal"
    j = SpillJournal(path)
    await j.open()
    for i in range(3):
        await j.append(batch(i))
    entries, _, _ = scan(path)
    data = bytearray(path.read_bytes())
    offset, _length = entries[1]
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    reopened = SpillJournal(path)
    await reopened.open()
    assert [b.id for b in await read_all(reopened)] == ["b0"]


async def test_size_cap(tmp_path: Path) -> None:
    """The journal reports full once its size reaches the cap."""
    j = SpillJournal(tmp_path / "r.journal", max_bytes=2048)
    await j.open()
    while not j.full:
        await j.append(batch(j.pending_batches))
    assert j.size >= 2048


@settings(max_examples=40, deadline=None)
@given(
    outputs=st.lists(json_values, min_size=1, max_size=5),
    cut=st.integers(min_value=1, max_value=400),
)
def test_property_any_truncation_keeps_a_prefix(
    tmp_path_factory: object, outputs: list[object], cut: int
) -> None:
    """Truncating the file anywhere leaves exactly the entries that were whole, never a misread."""
    import tempfile

    import trio

    async def main() -> None:
        path = Path(tempfile.mkdtemp()) / "p.journal"
        j = SpillJournal(path)
        await j.open()
        for i, out in enumerate(outputs):
            await j.append(batch(i, n=1, output=out))
        ends = []
        size = 0
        for i, out in enumerate(outputs):
            size += len(encode_entry(batch(i, n=1, output=out)))
            ends.append(size)
        new_size = max(0, size - cut)
        with path.open("r+b") as f:
            f.truncate(new_size)
        r = SpillJournal(path)
        await r.open()
        whole = sum(1 for e in ends if e <= new_size)
        got = await read_all(r)
        assert [b.id for b in got] == [f"b{i}" for i in range(whole)]
        assert [b.outcomes[0].output for b in got] == outputs[:whole]

    trio.run(main)
