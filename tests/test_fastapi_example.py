"""examples/fastapi_app.py end to end: uvicorn on 127.0.0.1, real HTTP requests, rows in PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastapi  # noqa: F401 - the example's dependencies, installed by the dev extra
import httpx
import pytest
import trio
import uvicorn  # noqa: F401

from arcflow.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


async def _wait_ready(client: Any, proc: trio.Process, url: str) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            assert proc.poll() is None, "uvicorn exited before it was ready"
            try:
                response = await client.get(url)
            except httpx.TransportError:
                await trio.sleep(0.1)
                continue
            if response.status_code == 200 and response.json()["ok"]:
                answer: dict[str, Any] = response.json()
                return answer
            await trio.sleep(0.1)


async def test_fastapi_example_records_one_outcome_per_request_and_loses_nothing_on_shutdown(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """230 concurrent POSTs over loopback: 200 rows by size while serving, all 230 after a clean SIGTERM shutdown."""
    port = free_port()
    env = {
        **os.environ,
        "ARCFLOW_DB": dsn,
        "ARCFLOW_RUN_ID": run_id,
        "ARCFLOW_BATCH_SIZE": "50",
        "ARCFLOW_FLUSH_INTERVAL": "600",  # only size and shutdown flush
        "ARCFLOW_DATA_DIR": str(tmp_path),
    }
    log = (tmp_path / "uvicorn.log").open("w+")
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.fastapi_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            health = await _wait_ready(client, proc, "/health")
            assert health["run_id"] == run_id

            async def post(i: int) -> None:
                body = {
                    "id": f"req-{i:03d}",
                    "status": "failed" if i % 10 == 0 else "passed",
                    "score": i / 1000,
                    "output": {"i": i},
                    "tags": ["http"],
                    "duration_ms": 3,
                }
                response = await client.post("/results", json=body)
                assert response.status_code == 200, response.text
                assert response.json() == {"run_id": run_id, "id": f"req-{i:03d}"}

            async with trio.open_nursery() as nursery:
                for i in range(230):
                    nursery.start_soon(post, i)
            bad = await client.post("/results", json={"id": "", "status": "maybe"})
            assert bad.status_code == 422  # validated before anything is recorded

            for _ in range(600):  # four full batches are written while serving
                stats = (await client.get("/stats")).json()
                if stats["written"] >= 200:
                    break
                await trio.sleep(0.05)
            assert stats["written"] == 200 and stats["pending_in_batcher"] == 30
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        log.seek(0)
        output = log.read()
        log.close()
    # uvicorn shuts down gracefully, then re-raises the signal to exit (so -SIGTERM, or 0 before 0.29)
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Finished server process" in output
    assert "Traceback" not in output and "ERROR" not in output, output
    rows = await db_query(
        "SELECT scenario_id, status, score, output, tags, duration_ms FROM arcflow.outcomes"
        " WHERE run_id = $1 ORDER BY scenario_id",
        run_id,
    )
    assert [r["scenario_id"] for r in rows] == [f"req-{i:03d}" for i in range(230)]
    assert rows[10]["status"] == "failed" and rows[11]["status"] == "passed"
    assert rows[11]["score"] == pytest.approx(0.011)
    assert rows[11]["tags"] == ["http"]
    assert rows[11]["duration_ms"] == pytest.approx(3.0)
    batches = await db_query(
        "SELECT reason, count(*) AS n, sum(size) AS rows FROM arcflow.batches WHERE run_id = $1"
        " GROUP BY reason ORDER BY reason",
        run_id,
    )
    assert [(b["reason"], b["n"], b["rows"]) for b in batches] == [
        ("shutdown", 1, 30),
        ("size", 4, 200),
    ]
    run = await db_query("SELECT status, suite FROM arcflow.runs WHERE run_id = $1", run_id)
    assert (run[0]["status"], run[0]["suite"]) == ("finished", "fastapi-example")
