"""Every outcome of a run, streamed out: ``python -m arcflow export RUN --format jsonl|csv|junit|parquet``.

The rows come from one server-side cursor in a read-only repeatable-read
transaction (a consistent snapshot, one query plan), fetched
:data:`PAGE_ROWS` at a time and written as they come, so memory stays flat
whatever the size of the run.  ``jsonl``, ``csv`` and ``parquet`` carry every
attempt (``--latest``: each scenario's conclusion only); ``junit`` has one
test case per scenario, its conclusion (latest final attempt).  A file is
written beside its destination and renamed into place at the end, so a failed
export never leaves half a file under the name asked for.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape, quoteattr

import attrs
import trio

from ..errors import ConfigError
from .html import split_stderr
from .options import EXPORT_FORMATS
from .queries import CONCLUSION_KEY, concluded, key_label

FORMATS = EXPORT_FORMATS

#: Rows per cursor fetch (one round trip each).
PAGE_ROWS = 2000

#: Rows per parquet row group.
ROW_GROUP_ROWS = 20_000

#: The columns of an exported outcome, in order.
COLUMNS = (
    "run_id",
    "scenario_id",
    "epoch",
    "attempt",
    "final",
    "status",
    "score",
    "output",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "duration_ms",
    "executor",
    "worker",
    "tags",
    "scenario_hash",
    "batch_id",
    "recorded_at",
)

#: Columns that newer schemas add (usage, tokens and cost): exported after
#: :data:`COLUMNS` when the table has them.
OPTIONAL_COLUMNS = ("usage", "input_tokens", "output_tokens", "cost_usd")

#: Stored as JSON text in the database's own spelling; exported as JSON values (jsonl) or text.
_JSON_COLUMNS = ("output", "executor", "usage")

PRESENT_COLUMNS_SQL = """
SELECT column_name FROM information_schema.columns
WHERE table_schema = 'arcflow' AND table_name = 'outcomes'
"""


def _select(columns: Sequence[str]) -> str:
    return ", ".join(f"o.{c}::text AS {c}" if c in _JSON_COLUMNS else f"o.{c}" for c in columns)


def export_sql(columns: Sequence[str], *, latest: bool) -> str:
    """Every attempt in key order, or (``latest``) each scenario's conclusion."""
    if latest:
        return (
            f"SELECT * FROM ({concluded(_select(columns))}) c ORDER BY {', '.join(CONCLUSION_KEY)}"
        )
    return (
        f"SELECT {_select(columns)} FROM arcflow.outcomes o WHERE o.run_id = $1 "
        "ORDER BY o.scenario_id, o.epoch, o.attempt"
    )


JUNIT_COUNTS_SQL = f"""
SELECT count(*) AS tests,
       count(*) FILTER (WHERE status = 'failed') AS failures,
       count(*) FILTER (WHERE status IN ('error', 'timeout')) AS errors,
       count(*) FILTER (WHERE status = 'cancelled') AS skipped,
       coalesce(sum(duration_ms), 0)::float8 AS total_ms, coalesce(max(epoch), 1) AS epochs
FROM ({concluded("o.status, o.duration_ms, o.epoch")}) c
"""


@attrs.frozen
class ExportResult:
    rows: int
    path: Path | None


# -- the cursor ---------------------------------------------------------------------------------------


async def _begin(conn: Any) -> Any:
    tr = conn.transaction(isolation="repeatable_read", readonly=True)
    await tr.start()
    return tr


async def _declare(conn: Any, query: str, *args: Any) -> Any:
    return await conn.cursor(query, *args)


async def _fetch(conn: Any, cursor: Any, n: int) -> list[Any]:
    rows: list[Any] = await cursor.fetch(n)
    return rows


async def _rollback(conn: Any, tr: Any) -> None:
    await tr.rollback()


async def _fetchrow(conn: Any, query: str, *args: Any) -> Any:
    return await conn.fetchrow(query, *args)


@attrs.define
class Snapshot:
    """A read-only snapshot of the database on the store's connection (one transaction)."""

    store: Any
    _tr: Any = None

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self.store.run(_fetchrow, query, *args)

    async def columns(self) -> tuple[str, ...]:
        """The exported columns: :data:`COLUMNS`, then the optional ones the table has."""
        rows = await self.store.fetch(PRESENT_COLUMNS_SQL)
        present = {r["column_name"] for r in rows}
        return COLUMNS + tuple(c for c in OPTIONAL_COLUMNS if c in present)

    async def pages(
        self, query: str, *args: Any, size: int = PAGE_ROWS
    ) -> AsyncIterator[list[Any]]:
        """The rows of ``query``, ``size`` at a time, from a server-side cursor."""
        cursor = await self.store.run(_declare, query, *args)
        while True:
            rows = await self.store.run(_fetch, cursor, size)
            if not rows:
                return
            yield rows
            if len(rows) < size:
                return


class _SnapshotContext:
    def __init__(self, store: Any) -> None:
        self.snapshot = Snapshot(store)

    async def __aenter__(self) -> Snapshot:
        self.snapshot._tr = await self.snapshot.store.run(_begin)
        return self.snapshot

    async def __aexit__(self, *exc: object) -> None:
        tr, self.snapshot._tr = self.snapshot._tr, None
        with trio.CancelScope(shield=True):
            try:
                await self.snapshot.store.run(_rollback, tr)
            except Exception:
                if exc[0] is None:
                    raise


def snapshot(store: Any) -> _SnapshotContext:
    """``async with snapshot(store) as snap``: read in one consistent, read-only transaction."""
    return _SnapshotContext(store)


# -- formats -----------------------------------------------------------------------------------------------

_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: Any) -> str:
    return escape(_XML_ILLEGAL.sub("\ufffd", str(value)))


def _xml_attr(value: Any) -> str:
    return quoteattr(_XML_ILLEGAL.sub("\ufffd", str(value)))


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def jsonl_lines(rows: Sequence[Any], columns: Sequence[str] = COLUMNS) -> str:
    """Outcome rows as JSON lines; ``output``, ``executor`` (and ``usage``) as JSON values, as stored."""
    out = []
    as_json = [c for c in columns if c in _JSON_COLUMNS]
    for r in rows:
        plain = {c: _iso(r[c]) for c in columns if c not in _JSON_COLUMNS}
        plain["tags"] = list(plain["tags"] or [])
        line = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
        extra = "".join(f',"{c}":{r[c] if r[c] is not None else "null"}' for c in as_json)
        out.append(line[:-1] + extra + "}\n")
    return "".join(out)


def csv_lines(
    rows: Sequence[Any], columns: Sequence[str] = COLUMNS, *, header: bool = False
) -> str:
    """Outcome rows as CSV (``columns``); JSON columns and tags as JSON text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for r in rows:
        writer.writerow(
            [
                json.dumps(list(r[c] or []), ensure_ascii=False)
                if c == "tags"
                else ""
                if r[c] is None
                else _iso(r[c])
                for c in columns
            ]
        )
    return buf.getvalue()


def junit_head(run: dict[str, Any], counts: Any) -> str:
    """The XML declaration and the opening ``testsuites``/``testsuite`` elements."""
    name = run.get("suite") or run["run_id"]
    seconds = f"{counts['total_ms'] / 1000:.3f}"
    totals = (
        f"tests={_xml_attr(counts['tests'])} failures={_xml_attr(counts['failures'])} "
        f"errors={_xml_attr(counts['errors'])} skipped={_xml_attr(counts['skipped'])} "
        f"time={_xml_attr(seconds)}"
    )
    started = _iso(run.get("started_at")) or ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<testsuites name={_xml_attr('arcflow ' + str(run['run_id']))} {totals}>\n"
        f"  <testsuite name={_xml_attr(name)} {totals} timestamp={_xml_attr(started)}>\n"
        f'    <properties><property name="run_id" value={_xml_attr(run["run_id"])}/></properties>\n'
    )


JUNIT_TAIL = "  </testsuite>\n</testsuites>\n"


def junit_cases(rows: Sequence[Any], classname: str, *, epochs: bool = False) -> str:
    """One ``testcase`` per row (a scenario's conclusion): failure, error or skipped as its status
    says; with ``epochs`` (the run repeats its scenarios) the name says which epoch."""
    out = []
    for r in rows:
        key = key_label(r, epochs=epochs)
        executor = json.loads(r["executor"]) if r["executor"] else {}
        message, tail = split_stderr(
            r["error_message"], executor if isinstance(executor, dict) else {}
        )
        props = [("epoch", r["epoch"]), ("attempt", r["attempt"])]
        props.append(("final", str(r["final"]).lower()))
        if r["score"] is not None:
            props.append(("score", repr(r["score"])))
        if r["tags"]:
            props.append(("tags", ",".join(r["tags"])))
        seconds = f"{r['duration_ms'] / 1000:.3f}"
        parts = [
            f"    <testcase name={_xml_attr(key)} classname={_xml_attr(classname)} "
            f"time={_xml_attr(seconds)}>",
            "      <properties>"
            + "".join(f"<property name={_xml_attr(k)} value={_xml_attr(v)}/>" for k, v in props)
            + "</properties>",
        ]
        status = r["status"]
        first = (message.splitlines() or [""])[0]
        if status == "failed":
            summary = first or (
                f"failed with score {r['score']:g}" if r["score"] is not None else "failed"
            )
            body = message or (r["output"] or "")
            parts.append(
                f'      <failure message={_xml_attr(summary)} type="failed">{_xml_text(body)}</failure>'
            )
        elif status in ("error", "timeout"):
            kind = r["error_type"] or status
            parts.append(
                f"      <error message={_xml_attr(first or status)} type={_xml_attr(kind)}>"
                f"{_xml_text(message)}</error>"
            )
        elif status == "cancelled":
            parts.append(f"      <skipped message={_xml_attr(first or 'cancelled')}/>")
        if r["output"] is not None:
            parts.append(f"      <system-out>{_xml_text(r['output'])}</system-out>")
        if tail:
            parts.append(f"      <system-err>{_xml_text(tail)}</system-err>")
        parts.append("    </testcase>")
        out.append("\n".join(parts) + "\n")
    return "".join(out)


def _pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ConfigError(
            "--format parquet needs pyarrow: pip install 'arcflow[parquet]' (or pyarrow)"
        ) from None
    return pyarrow


def _parquet_schema(columns: Sequence[str]) -> Any:
    pa = _pyarrow()
    ts = pa.timestamp("us", tz="UTC")
    types = {
        "attempt": pa.int32(),
        "epoch": pa.int32(),
        "final": pa.bool_(),
        "score": pa.float64(),
        "duration_ms": pa.float64(),
        "cost_usd": pa.float64(),
        "input_tokens": pa.int64(),
        "output_tokens": pa.int64(),
        "started_at": ts,
        "finished_at": ts,
        "recorded_at": ts,
        "tags": pa.list_(pa.string()),
    }
    return pa.schema([(c, types.get(c, pa.string())) for c in columns])


def _parquet_table(schema: Any, rows: Sequence[Any]) -> Any:
    pa = _pyarrow()
    columns = {c: [r[c] for r in rows] for c in schema.names}
    columns["tags"] = [list(t or []) for t in columns["tags"]]
    return pa.Table.from_pydict(columns, schema=schema)


# -- the export -------------------------------------------------------------------------------------------


async def export_run(
    store: Any,
    run_id: str,
    fmt: str,
    output: Path | str | None = None,
    *,
    latest: bool = False,
    page_rows: int = PAGE_ROWS,
    stdout: TextIO | None = None,
) -> ExportResult:
    """Write run ``run_id``'s outcomes as ``fmt`` to ``output`` (a path; None: ``stdout``)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise ConfigError("--format parquet writes a file: give --output FILE")
    if fmt == "parquet":
        _pyarrow()  # missing: say so before anything is read
    run = await store.get_run(run_id)
    if run is None:
        raise ConfigError(
            f"no run {run_id!r} in the database; `python -m arcflow runs` lists the runs there"
        )
    path = Path(output) if output is not None else None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part") if path is not None else None
    try:
        async with snapshot(store) as snap:
            if fmt == "parquet":
                assert tmp is not None
                schema = _parquet_schema(await snap.columns())
                rows = await _write_parquet(snap, schema, tmp, run_id, latest, page_rows)
            else:
                rows = await _write_text(snap, fmt, run, tmp, stdout, latest, page_rows)
        if tmp is not None and path is not None:
            await trio.Path(tmp).replace(path)
    except BaseException:
        if tmp is not None:
            with trio.CancelScope(shield=True):
                await trio.Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(rows=rows, path=path)


class _Stream:
    """Standard output as the async file the writers expect (a blocked pipe blocks the export)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    async def write(self, text: str) -> None:
        self.stream.write(text)
        await trio.lowlevel.checkpoint()

    async def flush(self) -> None:
        self.stream.flush()

    async def aclose(self) -> None:
        pass


async def _write_text(
    snap: Snapshot,
    fmt: str,
    run: dict[str, Any],
    tmp: Path | None,
    stdout: TextIO | None,
    latest: bool,
    page_rows: int,
) -> int:
    run_id = run["run_id"]
    out: Any
    if tmp is not None:
        try:
            out = await trio.open_file(tmp, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise ConfigError(f"cannot write {tmp.parent}: {exc.strerror or exc}") from None
    else:
        out = _Stream(stdout or sys.stdout)
    count = 0
    try:
        counts: Any = None
        if fmt == "junit":
            counts = await snap.fetchrow(JUNIT_COUNTS_SQL, run_id)
            await out.write(junit_head(run, counts))
        columns = await snap.columns()
        query = export_sql(columns, latest=latest or fmt == "junit")
        classname = str(run.get("suite") or run_id)
        if fmt == "csv":
            await out.write(csv_lines([], columns, header=True))
        async for rows in snap.pages(query, run_id, size=page_rows):
            if fmt == "jsonl":
                text = jsonl_lines(rows, columns)
            elif fmt == "csv":
                text = csv_lines(rows, columns)
            else:
                text = junit_cases(rows, classname, epochs=counts["epochs"] > 1)
            await out.write(text)
            count += len(rows)
        if fmt == "junit":
            await out.write(JUNIT_TAIL)
        await out.flush()
    finally:
        if tmp is not None:
            with trio.CancelScope(shield=True):
                await out.aclose()
    return count


async def _write_parquet(
    snap: Snapshot, schema: Any, tmp: Path, run_id: str, latest: bool, page_rows: int
) -> int:
    import pyarrow.parquet as pq

    try:
        writer = await trio.to_thread.run_sync(pq.ParquetWriter, str(tmp), schema)
    except OSError as exc:
        raise ConfigError(f"cannot write {tmp.parent}: {exc}") from None
    count = 0
    pending: list[Any] = []
    try:
        query = export_sql(schema.names, latest=latest)
        async for rows in snap.pages(query, run_id, size=page_rows):
            pending.extend(rows)
            count += len(rows)
            if len(pending) >= ROW_GROUP_ROWS:
                table, pending = _parquet_table(schema, pending), []
                await trio.to_thread.run_sync(writer.write_table, table)
        if pending or count == 0:
            await trio.to_thread.run_sync(writer.write_table, _parquet_table(schema, pending))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.close)
    return count
