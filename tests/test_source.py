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


async def test_lines_added_after_the_check_are_refused_at_their_line(tmp_path: Any) -> None:
    """A line appended after validation is not run: the source stops there, naming the line."""
    from arcflow.errors import ScenarioFileError
    from arcflow.scenarios import validate_file
    from arcflow.source import run_file_source

    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{i}"}) + "\n" for i in range(3)))
    suite = validate_file(path)
    with path.open("a") as f:
        f.write(json.dumps({"id": "s0"}) + "\n")  # a duplicate, added too late to be checked
    send, recv = trio.open_memory_channel[Scenario](100)
    with pytest.raises(ScenarioFileError, match=r"s\.jsonl:4: this line was added after"):
        await run_file_source(path, send, expect=suite)
    assert [s.id async for s in recv] == ["s0", "s1", "s2"]


async def test_a_last_line_without_newline_still_runs_when_more_is_appended(tmp_path: Any) -> None:
    """The checked part's last line (no newline) runs; the bytes appended after it do not."""
    from arcflow.errors import ScenarioFileError
    from arcflow.scenarios import validate_file
    from arcflow.source import run_file_source

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"id": "b"}))
    suite = validate_file(path)
    with path.open("a") as f:
        f.write("\n" + json.dumps({"id": "c"}) + "\n")
    send, recv = trio.open_memory_channel[Scenario](100)
    with pytest.raises(ScenarioFileError, match="added after the file was checked"):
        await run_file_source(path, send, expect=suite)
    assert [s.id async for s in recv] == ["a", "b"]


async def test_bytes_changed_after_the_check_are_an_error(tmp_path: Any) -> None:
    """A file whose checked bytes changed (same length) is an error once read."""
    from arcflow.errors import ScenarioFileError
    from arcflow.scenarios import validate_file
    from arcflow.source import run_file_source

    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "a", "input": {"x": 1}}) + "\n")
    suite = validate_file(path)
    path.write_text(json.dumps({"id": "a", "input": {"x": 2}}) + "\n")
    send, _recv = trio.open_memory_channel[Scenario](100)
    with pytest.raises(ScenarioFileError, match="the file changed while the run read it"):
        await run_file_source(path, send, expect=suite)
