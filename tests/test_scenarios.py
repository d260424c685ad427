"""Scenario files: the duplicate-id check in bounded memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=400), st.integers(1, 64))
def test_key_set_finds_repeats_in_memory_and_spilled(keys: list[int], memory_keys: int) -> None:
    """The duplicate-id key set finds exactly the repeated keys, in memory and spilled to disk."""
    from arcflow.scenarios import _KeySet

    expected = {k for k in keys if keys.count(k) > 1}
    for limit in (1 << 16, memory_keys):
        ks = _KeySet(memory_keys=limit, parts=8)
        for k in keys + [k for k in keys[:3]]:  # some repeats for sure
            ks.add(k)
        assert ks.repeated() == expected | set(keys[:3])


def test_duplicate_id_reported_past_the_in_memory_limit(tmp_path: Any, monkeypatch: Any) -> None:
    """A duplicate id past the in-memory limit is still reported with both line numbers."""
    import arcflow.scenarios as sc
    from arcflow.errors import ScenarioFileError

    monkeypatch.setattr(sc._KeySet.__init__, "__kwdefaults__", {"memory_keys": 100, "parts": 64})
    path = tmp_path / "s.jsonl"
    lines = [json.dumps({"id": f"s{i}"}) for i in range(1000)]
    path.write_text("\n".join([*lines, json.dumps({"id": "s7"})]) + "\n")
    with pytest.raises(ScenarioFileError, match=r"duplicate scenario id 's7' \(first on line 8\)"):
        sc.validate_file(path)
    path.write_text("\n".join(lines) + "\n")
    assert sc.validate_file(path).count == 1000


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b"{}", b" ", b"\xc3\xa9"]), max_size=40
    ),
    chunk=st.integers(1, 7),
)
def test_lines_split_as_text_mode_splits_them(
    parts: list[bytes], chunk: int, tmp_path_factory: Any
) -> None:
    """iter_lines gives the lines text mode gives (\\n, \\r\\n, \\r), whatever the read size."""
    import arcflow.scenarios as sc

    path = tmp_path_factory.mktemp("lines") / "s.jsonl"
    path.write_bytes(b"".join(parts))
    old, sc._READ_CHUNK = sc._READ_CHUNK, chunk
    try:
        got = [text for _, text in sc.iter_lines(path)]
    finally:
        sc._READ_CHUNK = old
    with path.open(newline=None, encoding="utf-8") as f:
        assert got == [line.rstrip("\n") for line in f]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"id": "a\\u0000b"}', r's\.jsonl:5: "id" contains a NUL character'),
        (b'{"id": "x\\ud800"}', r's\.jsonl:5: "id" contains a lone surrogate'),
        (b'{"id": "' + b"x" * 2000 + b'"}', r's\.jsonl:5: "id" is 2000 bytes long; at most 1024'),
        (b'{"id": "t", "tags": ["ok", "\\u0000"]}', r"s\.jsonl:5: tag '\\x00' contains a NUL"),
        (
            b'{"id": "deep", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            r"s\.jsonl:5: JSON nested too deep",
        ),
        (
            b'{"id": "big", "input": ' + b"9" * 5000 + b"}",
            r"s\.jsonl:5: invalid JSON value: Exceeds the limit",
        ),
        (
            b'{"id": "bytes", "input": "caf\xe9"}',
            r"s\.jsonl:5: not UTF-8 text: invalid continuation byte at byte 30",
        ),
    ],
)
def test_what_postgresql_or_json_cannot_take_is_refused_at_its_line(
    tmp_path: Any, line: bytes, message: str
) -> None:
    """NUL, lone surrogates, over-long ids, deep nesting, huge integers, bad bytes: file:line and why."""
    from arcflow.errors import ScenarioFileError
    from arcflow.scenarios import validate_file

    path = tmp_path / "s.jsonl"
    path.write_bytes(
        b"".join(json.dumps({"id": f"ok{i}"}).encode() + b"\n" for i in range(4)) + line + b"\n"
    )
    with pytest.raises(ScenarioFileError, match=message):
        validate_file(path)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.from_regex(r"\A\s*\{\s*\"id\"\s*:\s*\"[a-z]{1,5}\"\s*\}\s*\Z"),
        st.text(max_size=30),
    )
)
@example(text='{"id":"a"}\x85')  # str.isspace() takes U+0085; JSON does not
def test_loads_is_json_loads(text: str) -> None:
    """The fast line decoder gives what json.loads gives, or raises what it raises."""
    import arcflow.scenarios as sc

    try:
        expected: Any = ("ok", json.loads(text))
    except (ValueError, RecursionError) as exc:
        expected = ("error", type(exc))
    try:
        got: Any = ("ok", sc.loads(text))
    except (ValueError, RecursionError) as exc:
        got = ("error", type(exc))
    assert got == expected
