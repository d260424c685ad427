"""The Prometheus endpoint, scraped over HTTP on loopback during and after real runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import quickstart_args
from prometheus_client.parser import text_string_to_metric_families
from strategies import mid_run_statistics

import arcflow
from arcflow.errors import ConfigError
from arcflow.metrics import MetricsExporter
from arcflow.models import Batch, Scenario
from arcflow.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "operations.md"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[Samples, set[str], str]:
    """GET the endpoint: samples by (name, labels), family names, and the content type."""
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
        content_type = response.headers["Content-Type"]
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(body):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families, content_type


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def judge(scenario: Scenario) -> dict[str, Any] | None:
    """Every 10th scenario errors, odd ones fail, the rest pass."""
    n = int(scenario.id[1:])
    await trio.sleep(0.001)
    if n % 10 == 9:
        raise RuntimeError(f"scenario {n} broke")
    return {"status": "failed"} if n % 2 else None


def assert_matches_summary(samples: Samples, summary: dict[str, Any]) -> None:
    """Every counter the summary also reports has the summary's value."""
    assert value(samples, "arcflow_scenarios_submitted_total") == summary["scenarios"]
    assert value(samples, "arcflow_scenarios_completed_total") == summary["completed"]
    for status in ("passed", "failed", "error", "timeout", "cancelled"):
        assert value(samples, "arcflow_scenarios_total", status=status) == summary["by_status"].get(
            status, 0
        )
    assert value(samples, "arcflow_records_written_total") == summary["written"]
    assert value(samples, "arcflow_records_already_written_total") == summary["already_written"]
    for reason in ("size", "deadline", "shutdown"):
        assert value(samples, "arcflow_batches_total", reason=reason) == summary[
            "by_flush_reason"
        ].get(reason, 0)
    assert value(samples, "arcflow_write_transactions_total") == summary["write_transactions"]
    assert value(samples, "arcflow_write_retries_total") == summary["retries"]
    assert value(samples, "arcflow_dead_letters_total") == summary["dead_lettered"]
    assert value(samples, "arcflow_spilled_outcomes_total") == summary["spilled_outcomes"]
    assert value(samples, "arcflow_replayed_outcomes_total") == summary["replayed_outcomes"]
    # Histograms: one observation per write transaction and per attempt.
    assert value(samples, "arcflow_write_latency_seconds_count") == summary["write_transactions"]
    assert value(samples, "arcflow_batch_size_records_count") == summary["write_transactions"]
    assert (
        value(samples, "arcflow_batch_size_records_sum")
        == summary["written"] + summary["already_written"]
    )
    assert value(samples, "arcflow_scenario_duration_seconds_count") == summary["outcomes"]
    # Gauges at the end of a clean run.
    assert value(samples, "arcflow_breaker_state", state="closed") == 1
    assert value(samples, "arcflow_breaker_state", state="open") == 0
    assert value(samples, "arcflow_pending_records") == 0
    assert value(samples, "arcflow_journal_bytes") == 0
    assert value(samples, "arcflow_run_info", run_id=summary["run_id"]) == 1


async def test_scraped_during_and_after_a_real_run(dsn: str, run_id: str, tmp_path: Path) -> None:
    """During a run the endpoint serves live values; after it, exactly the final summary's."""
    exporter = MetricsExporter(port=0)
    exporter.bind()
    written = trio.Event()

    def on_batch(batch: Batch, inserted: int, latency: float) -> None:
        exporter.on_batch_written(batch, inserted, latency)
        written.set()

    try:
        async with arcflow.Runtime(
            executor=arcflow.PythonExecutor(judge),
            db=dsn,
            run_id=run_id,
            data_dir=tmp_path,
            batch_size=20,
            flush_interval=5,
            concurrency=4,
            on_batch_written=on_batch,
            on_outcome=exporter.on_outcome,
        ) as rt:
            exporter.attach(rt.statistics)
            for i in range(40):
                await rt.submit(Scenario(id=f"s{i}"))
            await written.wait()
            during, _families, content_type = await trio.to_thread.run_sync(scrape, exporter.url)
            assert content_type.startswith("text/plain; version=0.0.4")
            assert value(during, "arcflow_records_written_total") >= 20
            assert value(during, "arcflow_scenarios_submitted_total") == 40
            assert value(during, "arcflow_run_info", run_id=run_id) == 1
            for i in range(40, 100):
                await rt.submit(Scenario(id=f"s{i}"))
        summary = rt.summary()
        after, _families, _ = await trio.to_thread.run_sync(scrape, exporter.url)
    finally:
        exporter.close()
    assert summary["written"] == 100 and summary["by_status"]["error"] == 10
    assert_matches_summary(after, summary)


def test_metric_names_are_documented() -> None:
    """Every metric family the endpoint serves is listed in docs/operations.md."""
    from arcflow.metrics import stats_families

    snapshot = mid_run_statistics()
    names = {f.name + ("_total" if f.type == "counter" else "") for f in stats_families(snapshot)}
    names |= {
        "arcflow_batch_size_records",
        "arcflow_write_latency_seconds",
        "arcflow_scenario_duration_seconds",
    }
    text = DOCS.read_text(encoding="utf-8")
    missing = sorted(n for n in names if f"`{n}" not in text)
    assert not missing


def test_taken_port_is_a_config_error_naming_the_address() -> None:
    """Binding a port already in use fails before the run, naming host, port and metrics_port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = MetricsExporter(port=port)
        with pytest.raises(
            ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port} \(metrics_port\)"
        ):
            exporter.bind()


def test_binds_to_loopback_unless_told_otherwise() -> None:
    """The default address is 127.0.0.1; the endpoint answers there."""
    with MetricsExporter(port=0) as exporter:
        assert exporter._server.server_address[0] == "127.0.0.1"
        assert exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"
        samples, families, _ = scrape(exporter.url)
    assert "arcflow_write_latency_seconds" in families  # histograms exist before any run
    assert not any(name == "arcflow_scenarios_submitted_total" for name, _ in samples)


def test_cli_metrics_port_serves_the_final_summary(dsn: str, run_id: str, tmp_path: Path) -> None:
    """`run --metrics-port P --metrics-linger S`: scraped on loopback, the values equal the --json summary."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARCFLOW_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arcflow",
            *quickstart_args(dsn, run_id, tmp_path),
            "--concurrency",
            "1",
            "--batch-size",
            "25",
            "--metrics-port",
            str(port),
            "--metrics-linger",
            "60",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        during = None
        deadline = time.monotonic() + 60
        while during is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                samples, _, _ = scrape(url)
            except OSError:
                time.sleep(0.02)
                continue
            if ("arcflow_scenarios_submitted_total", ()) in samples:
                during = samples
        assert during is not None, proc.stderr.read() if proc.poll() is not None else "no scrape"
        assert proc.stdout is not None
        summary = json.loads(proc.stdout.readline())  # printed, then the endpoint lingers
        after, _, _ = scrape(url)
        assert_matches_summary(after, summary)
        assert summary["written"] == 300
        proc.send_signal(signal.SIGINT)  # ends the linger early
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
