"""The live progress display: rich on a (fake) terminal, plain lines elsewhere."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import quickstart_args
from rich.console import Console
from strategies import mid_run_statistics

from arcflow import cli
from arcflow.adaptive import AdaptiveBatchSize, AdaptiveConfig
from arcflow.models import Batch, FlushReason
from arcflow.progress import (
    FIELDS,
    PlainProgress,
    ProgressModel,
    RateMeter,
    RichProgress,
    choose_mode,
    format_bytes,
    format_duration,
)
from arcflow.stats import RuntimeStatistics

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "operations.md"


stats = mid_run_statistics


def fake_terminal(width: int = 160) -> Console:
    """rich's own recording console on a fake terminal."""
    return Console(
        file=io.StringIO(),
        force_terminal=True,
        width=width,
        color_system=None,
        legacy_windows=False,
        record=True,
    )


def rich_progress(total: int | None = 300, **kw: Any) -> tuple[RichProgress, Console]:
    console = fake_terminal()
    model = ProgressModel(total=total, clock=lambda: 10.0, **kw)
    return RichProgress(model, console, title="r-1", redirect=False), console


def test_rich_display_shows_the_documented_fields() -> None:
    """One frame on a fake terminal shows every documented field with its values."""
    progress, console = rich_progress()
    progress.on_batch_written(Batch("b", (), FlushReason.SIZE), 50, 0.0123)
    progress.draw(stats())
    progress.finish(stats())
    text = console.export_text()
    for label in FIELDS:
        assert re.search(rf"^{label}\s", text, re.M), label
    for value in (
        "120/300 (40.0%)",
        "8 running",
        "passed 100 · failed 15 · error 5 · timeout 0 · cancelled 0",
        "12 pending · batch size 50",
        "3 flushed (size 2 · deadline 1 · shutdown 0) · 3 written · 4 transactions · 0 retries",
        "last 12.3 ms · avg 12.3 ms · max 12.3 ms · 100 rows · 25.0 rows/s",
        "closed",
        "1.5 KiB · 0 batches spilled",
        "work 16 · outcomes 3 · batches 1",
    ):
        assert value in text, value
    assert "━" in text  # the progress bar


def test_rich_display_shows_rate_and_eta() -> None:
    """Rate is scenarios per second over a sliding window; ETA is what remains at that rate."""
    now = [0.0]
    model = ProgressModel(total=300, clock=lambda: now[0])
    model.fields(stats(completed=100))
    now[0] = 5.0
    by_label = {f.label: f.text for f in model.fields(stats(completed=150))}
    assert by_label["scenarios"].startswith("150/300 (50.0%) · 10.0/s · ETA 0:00:15")


def test_rich_display_highlights_trouble() -> None:
    """An open breaker and dead letters are shown in red, a non-empty journal in yellow."""
    model = ProgressModel(total=10, clock=lambda: 1.0)
    fields = {
        f.label: f
        for f in model.fields(
            stats(
                breaker_state="open",
                breaker_transitions={"closed->open": 1},
                dead_lettered=2,
            )
        )
    }
    assert fields["breaker"].text == "open · transitions closed->open 1"
    assert fields["breaker"].style == "bold red"
    assert fields["dead letters"].style == "bold red" and fields["dead letters"].text == "2"
    assert fields["journal"].style == "yellow"


def test_rich_display_shows_adaptive_batch_size() -> None:
    """With adaptive batching, the batcher field shows the controller's size, bounds and target."""
    ctl = AdaptiveBatchSize(
        AdaptiveConfig(minimum=10, maximum=1000, target_latency=0.25), initial=80
    )
    ctl.observe(80, 0.01)
    progress, console = rich_progress(adaptive=ctl)
    progress.draw(stats())
    progress.finish(stats())
    assert "batch size 88 (adaptive 10..1000, target 250 ms)" in console.export_text()


def test_unknown_total_shows_count_and_rate() -> None:
    """Without a total (embedding), the scenarios field shows what is done and the rate."""
    model = ProgressModel(total=None, clock=lambda: 1.0)
    assert model.fields(stats())[0].text == "120 done · 0.0/s · 8 running"


async def test_rich_display_redraws_a_few_times_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run() takes one snapshot and draws one frame every quarter second, until cancelled."""
    progress, _console = rich_progress()
    calls = []

    def source() -> RuntimeStatistics:
        calls.append(trio.current_time())
        return stats(completed=len(calls))

    with trio.move_on_after(2.0):
        await progress.run(source)
    progress.finish(stats())
    assert len(calls) == 8
    assert calls[1] - calls[0] == pytest.approx(0.25)


def test_drawing_a_frame_is_cheap() -> None:
    """A frame costs a few milliseconds at most, so 4 frames a second cannot slow a run measurably."""
    progress, _ = rich_progress()
    snapshot = stats()
    progress.draw(snapshot)
    started = time.perf_counter()
    for _ in range(50):
        progress.draw(snapshot)
    per_frame = (time.perf_counter() - started) / 50
    progress.finish(snapshot)
    assert per_frame < 0.025


async def test_plain_mode_prints_one_line_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Off a terminal: a plain line with every field every interval, no escape codes."""
    out = io.StringIO()
    progress = PlainProgress(ProgressModel(total=300), out, interval=10.0)
    with trio.move_on_after(35.0):
        await progress.run(lambda: stats())
    lines = out.getvalue().splitlines()
    assert len(lines) == progress.lines == 3
    for line in lines:
        assert line.startswith("arcflow: scenarios 120/300 (40.0%)")
        assert "\x1b" not in line
        for label in FIELDS:
            assert f"| {label} " in line or line.startswith(f"arcflow: {label} ")


@pytest.mark.parametrize(
    ("mode", "quiet", "json_summary", "stdout_tty", "stderr_tty", "expected"),
    [
        ("auto", False, False, True, True, "rich"),
        ("auto", False, False, False, True, "plain"),  # stdout piped: plain lines
        ("auto", False, False, False, False, "plain"),  # CI
        ("auto", False, True, False, True, "rich"),  # --json | jq on a terminal: display on stderr
        ("auto", False, True, False, False, "off"),  # --json read by a machine: nothing extra
        ("auto", True, False, True, True, "off"),  # --quiet
        ("plain", False, False, True, True, "plain"),
        ("rich", False, False, False, False, "rich"),
        ("off", False, False, True, True, "off"),
    ],
)
def test_mode_choice(
    mode: str, quiet: bool, json_summary: bool, stdout_tty: bool, stderr_tty: bool, expected: str
) -> None:
    """--progress auto picks rich on a terminal, plain lines in pipes and CI, nothing for --quiet."""
    assert (
        choose_mode(
            mode,
            quiet=quiet,
            json_summary=json_summary,
            stdout_tty=stdout_tty,
            stderr_tty=stderr_tty,
        )
        == expected
    )


def test_rate_meter_window() -> None:
    """The rate is measured over the last window only, once enough samples exist."""
    meter = RateMeter(window=10.0)
    assert meter.update(0.0, 0) == 0.0
    assert meter.update(10.0, 100) == 10.0
    assert meter.update(20.0, 400) == pytest.approx(30.0)


def test_formatting_helpers() -> None:
    """Bytes and durations read naturally."""
    assert (format_bytes(512), format_bytes(1536), format_bytes(3 * 1024**3)) == (
        "512 B",
        "1.5 KiB",
        "3.0 GiB",
    )
    assert (format_duration(65), format_duration(3725), format_duration(float("inf"))) == (
        "0:01:05",
        "1:02:05",
        "--:--",
    )


def test_fields_are_documented() -> None:
    """Every field the display shows is described in docs/operations.md."""
    text = DOCS.read_text(encoding="utf-8")
    for label in FIELDS:
        assert f"| {label} |" in text, label


# -- through the command line ----------------------------------------------------------------------


def test_cli_off_a_terminal_prints_plain_lines(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run` with stdout captured (not a terminal) prints plain progress lines to stderr, summary to stdout."""
    monkeypatch.chdir(ROOT)
    code = cli.main(
        [
            *quickstart_args(dsn, run_id, tmp_path),
            "--batch-size",
            "50",
            "--concurrency",
            "2",
            "--progress-interval",
            "0.05",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("arcflow: scenarios ")]
    assert lines, err
    assert all("/300 (" in line and "| breaker closed |" in line for line in lines)
    assert "\x1b" not in err
    assert out.startswith(f"run {run_id}\n")


def test_cli_json_off_a_terminal_prints_no_progress(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --json` read by a machine: stdout is exactly the JSON summary and stderr stays empty."""
    monkeypatch.chdir(ROOT)
    code = cli.main(
        [
            *quickstart_args(dsn, run_id, tmp_path),
            "--json",
            "--progress-interval",
            "0.01",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["written"] == 300
    assert err == ""


# -- statistics() and the progress hooks, for embedding services ----------------------------------


async def flaky(scenario: Any) -> dict[str, Any] | None:
    """s3 always errors; odd ones fail; the rest pass."""
    if scenario.id == "s3":
        raise ValueError("always broken")
    return {"status": "failed"} if int(scenario.id[1:]) % 2 else None


async def test_statistics_is_one_frozen_snapshot(dsn: str, run_id: str, tmp_path: Path) -> None:
    """statistics() returns an immutable, JSON-safe snapshot that later activity does not change."""
    import arcflow
    from arcflow.models import Scenario

    async with arcflow.Runtime(
        executor=arcflow.PythonExecutor(flaky),
        db=dsn,
        run_id=run_id,
        data_dir=tmp_path,
        batch_size=5,
        flush_interval=60,
    ) as rt:
        before = rt.statistics()
        for i in range(12):
            await rt.submit(Scenario(id=f"s{i}"))
    after = rt.statistics()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        after.written = 0  # type: ignore[misc]
    assert (before.submitted, before.written) == (0, 0)  # unchanged by the run
    assert after.submitted == after.completed == sum(after.by_status.values()) == 12
    assert after.written == 12 and after.by_flush_reason == {"size": 2, "shutdown": 1}
    assert (
        after.pending_in_batcher
        == after.outcome_queue
        == after.work_queue
        == after.batch_queue
        == 0
    )
    assert after.breaker_state == "closed" and after.elapsed > 0
    assert json.loads(json.dumps(after.as_dict()))["by_status"] == {
        "passed": 6,
        "failed": 5,
        "error": 1,
    }
    assert rt.summary()["written"] == after.written


async def test_hooks_fire_once_per_outcome_and_per_committed_write(
    dsn: str, run_id: str, tmp_path: Path, db_query: Any
) -> None:
    """on_outcome sees every attempt; on_batch_written(batch, inserted, latency) every committed write."""
    import arcflow
    from arcflow.models import Outcome, Scenario

    seen: list[Outcome] = []
    writes: list[tuple[str, int, int, float]] = []

    def on_batch(batch: Batch, inserted: int, latency: float) -> None:
        writes.append((batch.id, len(batch), inserted, latency))

    async with arcflow.Runtime(
        executor=arcflow.PythonExecutor(flaky),
        db=dsn,
        run_id=run_id,
        data_dir=tmp_path,
        batch_size=4,
        flush_interval=60,
        attempts=2,
        attempt_backoff=0.001,
        on_outcome=seen.append,
        on_batch_written=on_batch,
    ) as rt:
        for i in range(10):
            await rt.submit(Scenario(id=f"s{i}"))
    s = rt.statistics()
    # s3 errors twice (2 attempts): 11 outcomes for 10 scenarios.
    assert len(seen) == sum(s.by_status.values()) == 11
    assert [o.attempt for o in seen if o.scenario_id == "s3"] == [1, 2]
    assert [o.final for o in seen if o.scenario_id == "s3"] == [False, True]
    assert len(writes) == s.write_transactions
    assert sum(inserted for _, _, inserted, _ in writes) == s.written == 11
    assert all(latency >= 0 for *_, latency in writes)
    stored = await db_query(
        "SELECT batch_id, size, inserted FROM arcflow.batches WHERE run_id = $1", run_id
    )
    assert sorted((r["batch_id"], r["size"], r["inserted"]) for r in stored) == sorted(
        (batch_id, size, inserted) for batch_id, size, inserted, _ in writes
    )


def test_finish_without_a_frame_draws_nothing() -> None:
    """A run that failed before the display started leaves the terminal untouched."""
    progress, console = rich_progress()
    progress.finish(stats())
    assert console.export_text() == "" and progress.frames == 0
