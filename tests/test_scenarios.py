"""Scenario files: the duplicate-id check in bounded memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
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
