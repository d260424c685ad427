"""The typed public API: py.typed, mypy --strict on users' code and on the embedding modules, every name exported and documented."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import arcflow
import arcflow.aio
import arcflow.testing

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the embedding surface (this issue's files); mypy --strict must report nothing in them.

#: Public names whose module (not an embedding module) still lacks a docstring for them.
KNOWN_WITHOUT_DOCSTRING: set[str] = set()

USAGE = """
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, assert_type

import trio

import arcflow
import arcflow.aio
from arcflow.testing import FailingExecutor, TemporaryPostgres, fetch, make_outcome, outcome_rows


async def score(scenario: arcflow.Scenario) -> dict[str, Any]:
    return {"status": "passed", "score": 1.0}


async def trio_host(dsn: str) -> None:
    async with arcflow.open_runtime(db=dsn, batch_size=10, flush_interval=1.0, data_dir=Path("x")) as rt:
        assert_type(rt, arcflow.Runtime)
        await rt.record(make_outcome(rt.run_id, "a", score=0.5))
        try:
            rt.record_nowait(make_outcome(rt.run_id, "b"))
        except trio.WouldBlock:
            pass
        stats = rt.statistics()
        assert_type(stats, arcflow.RuntimeStatistics)
        assert_type(stats.written, int)
    async with arcflow.open_runtime(executor=score, db=dsn, on_outcome=[print]) as rt3:
        await rt3.submit(arcflow.Scenario(id="plain-function"))
    async with arcflow.Runtime(FailingExecutor("^x", mode="hang"), dsn, run_id="r") as rt2:
        await rt2.submit(arcflow.Scenario(id="x", input={"n": 1}, tags=["t"]))
        rt2.submit_nowait(arcflow.Scenario(id="y"))


async def asyncio_host(dsn: str) -> None:
    async with arcflow.aio.open_runtime(db=dsn, run_id="r", batch_size=100) as rt:
        assert_type(rt, arcflow.AsyncioRuntime)
        assert_type(rt.run_id, str)
        await rt.record(make_outcome(rt.run_id, "a"))
        try:
            rt.record_nowait(make_outcome(rt.run_id, "b"))
        except arcflow.PipelineFull:
            pass
        assert_type(await rt.statistics(), arcflow.RuntimeStatistics)
    runtime = arcflow.Runtime(arcflow.HostExecutor(score), dsn, concurrency=4)
    rt2 = arcflow.AsyncioRuntime(runtime, buffer=8)
    await rt2.start()
    try:
        await rt2.submit(arcflow.Scenario(id="s"))
        rt2.submit_nowait(arcflow.Scenario(id="t"))
    finally:
        await rt2.aclose()


def read_back(dsn: str) -> list[dict[str, Any]]:
    with TemporaryPostgres() as pg:
        assert_type(pg.dsn, str)
    assert_type(fetch(dsn, "SELECT 1"), list[dict[str, Any]])
    return outcome_rows(dsn, "r")


asyncio.run(asyncio_host("postgresql://localhost/db"))
trio.run(trio_host, "postgresql://localhost/db")
"""

MISUSE = """
import arcflow
import arcflow.aio

async def main() -> None:
    async with arcflow.aio.open_runtime(db=5) as rt:
        await rt.record("not an outcome")
    arcflow.open_runtime(executor=3.5)
    arcflow.open_runtime(db="postgresql://h/db", batch_sise=1)
    arcflow.Runtime(batch_size="100")
    arcflow.aio.open_runtime(db="postgresql://h/db", flush_intervall=2.0)
"""


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--show-error-codes", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_py_typed_marker_is_shipped() -> None:
    """arcflow ships py.typed (PEP 561) and the package data includes it."""
    assert (ROOT / "arcflow" / "py.typed").exists()
    assert 'arcflow = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def test_users_code_on_the_public_api_is_mypy_strict_clean(tmp_path: Path) -> None:
    """Typical trio, asyncio and test-suite code against the public API passes mypy --strict, with exact types."""
    usage = tmp_path / "usage.py"
    usage.write_text(USAGE)
    proc = _mypy("--strict", "--follow-imports=silent", str(usage))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_types_reject_misuse(tmp_path: Path) -> None:
    """The public signatures are real types, not Any: wrong arguments are reported."""
    misuse = tmp_path / "misuse.py"
    misuse.write_text(MISUSE)
    proc = _mypy("--strict", "--follow-imports=silent", str(misuse))
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 6, proc.stdout
    assert sum("[arg-type]" in line for line in errors) == 4, proc.stdout
    misspelt = [line for line in errors if "[call-arg]" in line]
    assert len(misspelt) == 2 and "batch_sise" in misspelt[0] and "flush_intervall" in misspelt[1]


def test_package_is_mypy_strict_clean() -> None:
    """mypy --strict over the whole package and the FastAPI example reports no error."""
    proc = _mypy("--strict", "arcflow", "examples/fastapi_app.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^Success: no issues found in \d+ source files?", proc.stdout, re.M), (
        proc.stdout
    )


def test_every_public_name_is_exported_and_documented() -> None:
    """Every name in arcflow.__all__ exists, has a docstring, and is documented in the README or docs/."""
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    undocumented, no_docstring = [], set()
    for name in arcflow.__all__:
        if not re.search(rf"(?<![\w.]){re.escape(name)}\b", docs):
            undocumented.append(name)
        obj = getattr(arcflow, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)) and not (
            obj.__doc__ or ""
        ).strip():
            no_docstring.add(name)
    assert undocumented == []
    assert no_docstring <= KNOWN_WITHOUT_DOCSTRING
    assert set(arcflow.aio.__all__) == {"AsyncioRuntime", "HostExecutor", "open_runtime"}
    assert set(arcflow.testing.__all__) <= set(dir(arcflow.testing))


def test_embedding_docs_examples_are_valid_python() -> None:
    """Every ```python block of docs/embedding.md compiles."""
    text = (ROOT / "docs" / "embedding.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5
    for block in blocks:
        compile(textwrap.dedent(block), "docs/embedding.md", "exec")


def test_runtime_options_are_the_config_fields() -> None:
    """The typed keywords of Runtime(...) are exactly RuntimeConfig's fields."""
    import attrs

    from arcflow.config import RuntimeConfig, RuntimeOptions

    assert set(RuntimeOptions.__annotations__) == {f.name for f in attrs.fields(RuntimeConfig)}
