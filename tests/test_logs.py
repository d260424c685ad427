"""Structured logs: run and batch ids on every batch line, human or JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import quickstart_args

import arcflow
from arcflow import cli
from arcflow.logs import (
    HumanFormatter,
    JsonFormatter,
    configure_logging,
    ids_from_args,
    log_context,
    record_ids,
)
from arcflow.models import Outcome, Status

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test leaves the root logger as it found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def make_record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("arcflow.writer", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_ids_come_from_run_and_batch_placeholders() -> None:
    """The argument after 'run' is the run id, the one after 'batch' the batch id, whatever precedes them."""
    assert ids_from_args("run %s batch %s: retry %d/%d in %.2fs", ("r1", "b1", 1, 3, 0.5)) == {
        "run_id": "r1",
        "batch_id": "b1",
    }
    assert ids_from_args("writer restarted: handling in-flight batch %s first", ("b9",)) == {
        "batch_id": "b9"
    }
    assert ids_from_args("run %s: replaying %d spilled batches from %s", ("r2", 3, "/j")) == {
        "run_id": "r2"
    }
    assert ids_from_args("%d%% done, run %s", (50, "r3")) == {"run_id": "r3"}
    assert ids_from_args("no placeholders", ()) == {}


def test_extra_beats_arguments_beats_context() -> None:
    """extra= fields win over parsed arguments, which win over log_context()."""
    with log_context(run_id="ctx-run", batch_id="ctx-batch"):
        assert record_ids(make_record("plain message")) == {
            "run_id": "ctx-run",
            "batch_id": "ctx-batch",
        }
        assert record_ids(make_record("run %s batch %s", "r", "b")) == {
            "run_id": "r",
            "batch_id": "b",
        }
        assert record_ids(make_record("run %s batch %s", "r", "b", batch_id="x")) == {
            "run_id": "r",
            "batch_id": "x",
        }
    assert record_ids(make_record("plain message")) == {}


def test_json_formatter_fields() -> None:
    """A JSON line has ts, level, logger, message, run_id, batch_id and extra fields."""
    line = JsonFormatter().format(
        make_record("run %s batch %s: spilled %d outcomes", "r1", "b1", 7, sqlstate="08006")
    )
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "arcflow.writer"
    assert data["message"] == "run r1 batch b1: spilled 7 outcomes"
    assert (data["run_id"], data["batch_id"], data["sqlstate"]) == ("r1", "b1", "08006")
    assert data["ts"].endswith("+00:00")


def test_json_formatter_includes_the_exception() -> None:
    """An exception's traceback is one 'exception' field, still one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_human_formatter_appends_ids_the_message_lacks() -> None:
    """A human line about a batch that does not show the run id gets [run=...] appended."""
    fmt = HumanFormatter()
    with log_context(run_id="r7"):
        text = fmt.format(make_record("writer restarted: handling in-flight batch %s first", "b7"))
        assert text.endswith("writer restarted: handling in-flight batch b7 first [run=r7]")
        shown = fmt.format(make_record("run %s batch %s: retry", "r7", "b7"))
        assert shown.endswith("run r7 batch b7: retry")


def test_configure_logging_replaces_its_own_handler() -> None:
    """Calling configure_logging twice leaves one arcflow handler, with the new format."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "human", first)
    configure_logging("INFO", "json", second)
    logging.getLogger("arcflow.test").info("run %s batch %s: hello", "r", "b")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["batch_id"] == "b"


async def test_writer_lines_carry_run_and_batch_ids_in_a_real_run(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """In a real run with a poison record, every JSON line about a batch has run_id and batch_id."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    bad = Outcome(
        run_id=run_id,
        scenario_id="poison",
        attempt=1,
        status=Status.PASSED,
        started_at=T0,
        finished_at=T0,
        output={"text": "bad\u0000byte"},
    )
    good = [
        Outcome(
            run_id=run_id,
            scenario_id=f"s{i}",
            attempt=1,
            status=Status.PASSED,
            started_at=T0,
            finished_at=T0,
        )
        for i in range(5)
    ]
    async with arcflow.Runtime(
        db=dsn, run_id=run_id, data_dir=tmp_path, batch_size=10, flush_interval=0.5
    ) as rt:
        for item in [*good, bad]:
            await rt.record(item)
    assert rt.statistics().dead_lettered == 1
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    about_batches = [r for r in records if " batch " in r["message"]]
    assert any("dead-lettered" in r["message"] for r in about_batches)
    for r in about_batches:
        assert r["run_id"] == run_id, r
        assert r["batch_id"] and r["batch_id"] in r["message"], r


def test_cli_json_logs_keep_stdout_clean(
    dsn: str,
    run_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`run --json --log-format json --log-level debug`: stdout is the summary, stderr JSON lines with ids."""
    monkeypatch.chdir(ROOT)
    code = cli.main(
        [
            *quickstart_args(dsn, run_id, tmp_path),
            "--batch-size",
            "100",
            "--json",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["run_id"] == run_id and summary["written"] == 300
    lines = [json.loads(line) for line in err.splitlines()]
    written = [r for r in lines if r["logger"] == "arcflow.batches"]
    assert len(written) == summary["write_transactions"] == 3
    for r in written:
        assert r["run_id"] == run_id and r["batch_id"] and r["level"] == "DEBUG"
