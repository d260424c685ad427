"""The file source: lines read in chunks off the event loop, parsed as the validator parses them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from arcflow.models import Scenario


async def _source(path: Any, **kw: Any) -> list[Scenario]:
    from arcflow.source import run_file_source

    send, recv = trio.open_memory_channel[Scenario](100_000)
    await run_file_source(path, send, **kw)
    out = []
    async for s in recv:
        out.append(s)
    return out


@pytest.mark.parametrize("read_size", [1, 7, 64, 1 << 18])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
async def test_source_reads_what_iter_file_reads(
    tmp_path: Any, monkeypatch: Any, read_size: int, newline: str
) -> None:
    """The file source yields what iter_file yields, whatever the read size and newline style."""
    import arcflow.source as source
    from arcflow.scenarios import iter_file

    monkeypatch.setattr(source, "_READ_SIZE", read_size)
    lines = [
        json.dumps({"id": "a", "input": {"t": "é ü ✓ \u2028 𝄞"}}, ensure_ascii=False),
        "",
        "   ",
        json.dumps({"id": "b", "tags": ["x"], "timeout_s": 2}),
        json.dumps({"id": 7, "metadata": {"k": [1, 2]}}),
    ]
    path = tmp_path / "s.jsonl"
    for trailing in (True, False):
        path.write_bytes((newline.join(lines) + (newline if trailing else "")).encode())
        expected = [s for _n, s in iter_file(path)]
        assert await _source(path) == expected
        assert [s.id for s in await _source(path, skip=lambda s: s.id == "b")] == ["a", "7"]


async def test_source_errors_name_the_line(tmp_path: Any) -> None:
    """A bad line met by the source is a ScenarioFileError naming file and line."""
    from arcflow.errors import ScenarioFileError

    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b",}\n')
    with pytest.raises(ScenarioFileError, match=r"s.jsonl:3: invalid JSON at column 12"):
        await _source(path)
    path.write_text('{"id": "a"}\n{"id": "b", "bogus": 1}\n')
    with pytest.raises(ScenarioFileError, match=r":2: unknown keys \['bogus'\]"):
        await _source(path)
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "\xff"}\n')
    with pytest.raises(ScenarioFileError, match=r":3: not UTF-8 text"):
        await _source(path)
    with pytest.raises(ScenarioFileError, match="no such file"):
        await _source(tmp_path / "missing.jsonl")
