"""``python -m benchmarks --quick`` runs and writes its results (never checks the numbers)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

BENCHMARKS = [
    "ingest", "roundtrips", "latency", "memory", "trickle", "outage", "modal", "modal_fn",
    "modal_paths", "cli", "concurrency", "fleet",
]  # fmt: skip


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("ARCFLOW_DB", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert set(results) >= {"meta", "benchmarks"}
    assert results["meta"]["quick"] is True
    assert {"date", "commit", "python", "postgres", "machine"} <= set(results["meta"])
    assert set(results["benchmarks"]) == set(BENCHMARKS)
    for name, result in results["benchmarks"].items():
        assert isinstance(result.get("targets"), list) and result["targets"], name
        for target in result["targets"]:
            assert {"target", "value", "goal", "met"} <= set(target), name

    ingest = results["benchmarks"]["ingest"]
    for size in ingest["batch_sizes"]:
        assert {"arcflow", "asyncio batcher", "raw COPY"} <= set(ingest["records_per_s"][str(size)])
        assert {"arcflow/raw_copy", "arcflow/per_record_insert"} <= set(ingest["ratios"][str(size)])
    assert "per-record INSERT" in ingest["records_per_s"]["1000"]
    rt = results["benchmarks"]["roundtrips"]["systems"]
    assert {"arcflow", "asyncio batcher", "raw COPY", "per-record INSERT"} == set(rt)
    assert all({"commits_per_1000", "statements_per_1000"} <= set(v) for v in rt.values())
    assert {"bound_records_per_s", "systems"} <= set(results["benchmarks"]["latency"])
    assert {"large_over_small", "systems"} <= set(results["benchmarks"]["memory"])
    assert {"p50_ms", "p99_ms"} <= set(results["benchmarks"]["trickle"]["systems"]["arcflow"])
    outage = results["benchmarks"]["outage"]["systems"]["arcflow"]
    assert {"phases", "lost", "duplicated"} <= set(outage)
    assert set(outage["phases"]) == {"before", "during", "after"}

    md = (tmp_path / "latest.md").read_text()
    for heading in (
        "Ingest",
        "Round trips",
        "Latency-bound",
        "Memory",
        "Trickle",
        "Outage",
        "Modal sandboxes",
        "Targets",
    ):
        assert heading in md
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra; CI installs dev only
        assert (tmp_path / "latest.png").stat().st_size > 1000
