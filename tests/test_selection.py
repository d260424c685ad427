"""Choosing scenarios: ids, tags, shards, samples, limits, what failed before; resume keeps it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import suite_ids

from arcflow.errors import ConfigError
from arcflow.scenarios import validate_file
from arcflow.selection import Selection, parse_shard, shard_of
from arcflow.source import run_file_source

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@settings(max_examples=200, deadline=None)
@given(ids=suite_ids, count=st.integers(1, 12))
def test_the_shards_of_a_suite_are_disjoint_and_cover_it(ids: set[str], count: int) -> None:
    """Every id is in exactly one of the N shards."""
    shards = [
        {sid for sid in ids if Selection(shard=(i, count)).matches(sid, ())}
        for i in range(1, count + 1)
    ]
    assert set().union(*shards) == ids
    assert sum(len(s) for s in shards) == len(ids)
    assert all(shard_of(sid, count) in range(1, count + 1) for sid in ids)


def test_shard_syntax() -> None:
    """I/N needs 1 <= I <= N; anything else says what is expected."""
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "2/0"):
        with pytest.raises(ConfigError, match="expected I/N"):
            parse_shard(bad)


def _file(tmp: Path, n: int) -> Path:
    path = tmp / "s.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"s{i:03d}", "tags": ["even" if i % 2 == 0 else "odd"]}) + "\n"
            for i in range(n)
        )
    )
    return path


async def _taken(path: Path, selection: Selection) -> list[str]:
    suite = validate_file(path, selection)
    send, recv = trio.open_memory_channel[Any](1000)
    await run_file_source(path, send, expect=suite)
    got = [s.id async for s in recv]
    assert len(got) == suite.count  # the validation pass counted what the source takes
    return got


async def test_filters_sample_and_limit_take_what_they_say(tmp_path: Path) -> None:
    """ids, tags, exclude_tags, a seeded sample and a limit, each and together."""
    path = _file(tmp_path, 50)
    assert await _taken(path, Selection(ids={"s001", "s007", "nope"})) == ["s001", "s007"]
    assert len(await _taken(path, Selection(tags=["even"]))) == 25
    assert await _taken(path, Selection(exclude_tags=["even"], limit=3)) == ["s001", "s003", "s005"]
    sample = await _taken(path, Selection(sample=10, seed=7))
    assert len(sample) == 10 and sample == await _taken(path, Selection(sample=10, seed=7))
    assert sample != await _taken(path, Selection(sample=10, seed=8))
    both = await _taken(path, Selection(tags=["odd"], sample=5, seed=1, limit=3))
    assert len(both) == 3 and all(int(s[1:]) % 2 == 1 for s in both)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.run(
        [sys.executable, "-m", "arcflow", "run", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_the_run_records_its_selection_and_resume_keeps_it(
    dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """A run with --tag keeps it on --resume; a different selection on resume is refused."""
    path = _file(tmp_path, 20)
    common = ["--executor", "python:faulty_exec:by_input", "--db", dsn, "--data-dir", str(tmp_path)]
    first = await trio.to_thread.run_sync(
        lambda: _cli(
            str(path), *common, "--run-id", run_id, "--tag", "odd", "--limit", "4", "--json"
        )
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["scenarios"] == 4
    row = await db_query("SELECT config FROM arcflow.runs WHERE run_id = $1", run_id)
    assert json.loads(row[0]["config"])["selection"] == {"tags": ["odd"], "limit": 4}
    again = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--resume", run_id, "--json")
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["scenarios"] == 0  # the same 4, all done
    other = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--resume", run_id, "--tag", "even")
    )
    assert other.returncode == 2 and "resume it with the same selection" in other.stderr


async def test_only_failed_reruns_what_failed_in_another_run(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """--only-failed RUN takes the scenarios whose final outcome in RUN was failed or error."""
    path = tmp_path / "s.jsonl"
    modes = ["pass", "fail", "error", "pass", "fail"]
    path.write_text(
        "".join(
            json.dumps({"id": f"m{i}", "input": {"mode": m}}) + "\n" for i, m in enumerate(modes)
        )
    )
    common = ["--executor", "python:faulty_exec:by_input", "--db", dsn, "--data-dir", str(tmp_path)]
    first = await trio.to_thread.run_sync(lambda: _cli(str(path), *common, "--run-id", run_id))
    assert first.returncode == 0, first.stderr
    second = await trio.to_thread.run_sync(
        lambda: _cli(
            str(path), *common, "--run-id", run_id + "-b", "--only-failed", run_id, "--json"
        )
    )
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["scenarios"] == 3
    nothing = await trio.to_thread.run_sync(
        lambda: _cli(str(path), *common, "--run-id", run_id + "-c", "--id", "m0", "--tag", "nope")
    )
    assert nothing.returncode == 2 and "takes none of the 5 scenarios" in nothing.stderr
