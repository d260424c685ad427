"""Live progress: a rich display on a terminal, plain periodic lines elsewhere.

Both show the same fields (see :data:`FIELDS`), built from one
:class:`~arcflow.stats.RuntimeStatistics` snapshot plus what the writer's hook
reports (write latencies)::

    scenarios     120/300 (40.0%) · 35.2/s · ETA 0:00:05 · 8 running
    status        passed 100 · failed 15 · error 5 · timeout 0 · cancelled 0
    batcher       12 pending · batch size 100
    batches       3 flushed (size 2 · deadline 1 · shutdown 0) · 3 written · 4 transactions · 0 retries
    writes        last 12.3 ms · avg 10.1 ms · max 20.0 ms · 1,234 rows · 4,000.0 rows/s
    breaker       closed
    journal       0 B · 0 batches spilled · 0 outcomes replayed
    dead letters  0
    queues        work 16 · outcomes 3 · batches 0

The display reads the statistics in the trio thread a few times a second
(``refresh_per_second``, default 4) and never blocks the pipeline: one
snapshot and one render per frame, a millisecond or so.
"""

from __future__ import annotations

import collections
import math
import sys
from collections.abc import Callable
from typing import Any, Protocol, TextIO

import attrs
import trio

from .models import Batch
from .stats import RuntimeStatistics

#: The labels of the fields, in display order (documented in docs/operations.md).
FIELDS = (
    "scenarios",
    "status",
    "batcher",
    "batches",
    "writes",
    "breaker",
    "journal",
    "dead letters",
    "queues",
)

STATUSES = ("passed", "failed", "error", "timeout", "cancelled")
FLUSH_REASONS = ("size", "deadline", "shutdown")

StatsSource = Callable[[], RuntimeStatistics]


class BatchSizeSource(Protocol):
    def current(self) -> int: ...

    def describe(self) -> str: ...


# -- measurements --------------------------------------------------------------------------------


@attrs.define
class WriteLatency:
    """Latencies of committed writes, fed by ``on_batch_written``."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0
    last: float = 0.0

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        self.count += 1
        self.total += latency
        self.max = max(self.max, latency)
        self.last = latency

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


class RateMeter:
    """Scenarios per second over a sliding window (the whole run until the window fills)."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, now: float, done: int) -> float:
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, d0 = samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0


# -- formatting ---------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``65`` -> ``0:01:05``; unknown -> ``--:--``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@attrs.frozen
class Field:
    """One line of the display: a label, its text, and a rich style for the text."""

    label: str
    text: str
    style: str = ""


class ProgressModel:
    """Turns statistics snapshots into the display's fields; keeps rate and latency history."""

    def __init__(
        self,
        *,
        total: int | None = None,
        latency: WriteLatency | None = None,
        adaptive: BatchSizeSource | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.total = total
        self.latency = latency if latency is not None else WriteLatency()
        self.adaptive = adaptive
        self.rate = RateMeter()
        self._clock = clock

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        """The writer's hook (write latency history)."""
        self.latency.on_batch_written(batch, inserted, latency)

    def fields(self, s: RuntimeStatistics) -> list[Field]:
        """Every field of :data:`FIELDS`, in order, for snapshot ``s``."""
        rate = self.rate.update(self._clock(), s.completed)
        fields = [
            self._scenarios(s, rate),
            self._status(s),
            self._batcher(s),
            self._batches(s),
            self._writes(s),
            self._breaker(s),
            self._journal(s),
            Field("dead letters", f"{s.dead_lettered:,}", "bold red" if s.dead_lettered else ""),
            Field(
                "queues",
                f"work {s.work_queue} · outcomes {s.outcome_queue} · batches {s.batch_queue}",
            ),
        ]
        if s.input_tokens or s.output_tokens or s.cost_usd:
            fields.append(
                Field(
                    "usage",
                    f"{s.input_tokens:,} tokens in · {s.output_tokens:,} out · ${s.cost_usd:,.4f}",
                )
            )
        if s.fleet:  # a shared run: this worker and the whole run, as of its last heartbeat
            by_state = s.fleet.get("by_state") or {}
            total = sum(by_state.values())
            fields.append(
                Field(
                    "fleet",
                    f"run {by_state.get('done', 0):,}/{total:,} done · "
                    f"{s.fleet.get('live_workers', 0)} workers live · this worker "
                    f"claimed {s.fleet.get('claimed', 0):,}, lost {s.fleet.get('lost', 0):,}",
                    "yellow" if s.fleet.get("lost") else "",
                )
            )
        if s.executor:  # the executor's own numbers (modal: creation rate, refusals)
            text = " · ".join(f"{k.replace('_', ' ')} {v:,.4g}" for k, v in s.executor.items())
            fields.append(Field("executor", text))
        return fields

    def _scenarios(self, s: RuntimeStatistics, rate: float) -> Field:
        if self.total:
            pct = 100.0 * s.completed / self.total
            eta = (self.total - s.completed) / rate if rate > 0 else math.inf
            head = f"{s.completed:,}/{self.total:,} ({pct:.1f}%) · {rate:.1f}/s · ETA {format_duration(eta)}"
        else:
            head = f"{s.completed:,} done · {rate:.1f}/s"
        return Field("scenarios", f"{head} · {s.running} running")

    def _status(self, s: RuntimeStatistics) -> Field:
        names = list(STATUSES) + sorted(set(s.by_status) - set(STATUSES))
        text = " · ".join(f"{name} {s.by_status.get(name, 0):,}" for name in names)
        bad = any(s.by_status.get(n, 0) for n in ("error", "timeout"))
        return Field("status", text, "yellow" if bad else "")

    def _batcher(self, s: RuntimeStatistics) -> Field:
        size = self.adaptive.current() if self.adaptive is not None else s.batch_size
        text = f"{s.pending_in_batcher:,} pending · batch size {size:,}"
        if self.adaptive is not None:
            text += f" ({self.adaptive.describe()})"
        return Field("batcher", text)

    def _batches(self, s: RuntimeStatistics) -> Field:
        reasons = " · ".join(f"{r} {s.by_flush_reason.get(r, 0):,}" for r in FLUSH_REASONS)
        flushed = sum(s.by_flush_reason.values())
        return Field(
            "batches",
            f"{flushed:,} flushed ({reasons}) · {s.batches_written:,} written · "
            f"{s.write_transactions:,} transactions · {s.retries:,} retries",
            "yellow" if s.retries else "",
        )

    def _writes(self, s: RuntimeStatistics) -> Field:
        lat = self.latency
        last = lat.last if lat.count else s.last_write_latency
        throughput = s.written / s.elapsed if s.elapsed > 0 else 0.0
        text = (
            f"last {_ms(last)} · avg {_ms(lat.mean)} · max {_ms(lat.max)} · "
            f"{s.written:,} rows · {throughput:,.1f} rows/s"
        )
        if s.already_written:
            text += f" · {s.already_written:,} already stored"
        return Field("writes", text)

    def _breaker(self, s: RuntimeStatistics) -> Field:
        text = s.breaker_state
        if s.breaker_transitions:
            moves = ", ".join(f"{k} {v}" for k, v in sorted(s.breaker_transitions.items()))
            text += f" · transitions {moves}"
        style = {"open": "bold red", "half_open": "yellow"}.get(s.breaker_state, "green")
        return Field("breaker", text, style)

    def _journal(self, s: RuntimeStatistics) -> Field:
        text = (
            f"{format_bytes(s.journal_bytes)} · {s.spilled_batches:,} batches spilled · "
            f"{s.replayed_outcomes:,} outcomes replayed"
        )
        if s.journal_error:
            return Field("journal", f"{text} · REFUSES WRITES: {s.journal_error}", "bold red")
        return Field("journal", text, "yellow" if s.journal_bytes else "")


def plain_line(fields: list[Field]) -> str:
    """The fields as one line, for logs and pipes."""
    return "arcflow: " + " | ".join(f"{f.label} {f.text}" for f in fields)


# -- the displays ---------------------------------------------------------------------------------


class PlainProgress:
    """One plain line every ``interval`` seconds (CI, pipes)."""

    def __init__(
        self, model: ProgressModel, stream: TextIO | None = None, *, interval: float = 10.0
    ) -> None:
        self.model = model
        self.stream = stream
        self.interval = interval
        self.lines = 0

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        self.model.on_batch_written(batch, inserted, latency)

    def emit(self, stats: RuntimeStatistics) -> None:
        out = self.stream if self.stream is not None else sys.stderr
        out.write(plain_line(self.model.fields(stats)) + "\n")
        out.flush()
        self.lines += 1

    async def run(self, source: StatsSource) -> None:
        """Print a line every interval until cancelled."""
        self.model.fields(source())  # start the rate window now
        while True:
            await trio.sleep(self.interval)
            self.emit(source())

    def finish(self, stats: RuntimeStatistics) -> None:
        """Nothing to tear down; the summary follows."""


class RichProgress:
    """A live, redrawn display on a terminal, with rich."""

    def __init__(
        self,
        model: ProgressModel,
        console: Any = None,
        *,
        refresh_per_second: float = 4.0,
        title: str | None = None,
        redirect: bool = True,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self.model = model
        self.console = console if console is not None else Console(stderr=True)
        self.interval = 1.0 / refresh_per_second
        self.title = title
        self.frames = 0
        self._live = Live(
            console=self.console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=redirect,
            redirect_stderr=redirect,
        )
        self._started = False

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        self.model.on_batch_written(batch, inserted, latency)

    def renderable(self, stats: RuntimeStatistics) -> Any:
        """The frame for ``stats``: a progress bar, then one row per field."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column()
        if self.title:
            grid.add_row("run", Text(self.title, style="bold"))
        total = self.model.total
        grid.add_row(
            "", ProgressBar(total=float(total or 0) or None, completed=stats.completed, width=50)
        )
        for field in self.model.fields(stats):
            grid.add_row(field.label, Text(field.text, style=field.style))
        return grid

    def draw(self, stats: RuntimeStatistics) -> None:
        """Redraw now with ``stats``."""
        if not self._started:
            self._live.start()
            self._started = True
        self._live.update(self.renderable(stats), refresh=True)
        self.frames += 1

    async def run(self, source: StatsSource) -> None:
        """Redraw ``refresh_per_second`` times a second until cancelled."""
        while True:
            self.draw(source())
            await trio.sleep(self.interval)

    def finish(self, stats: RuntimeStatistics) -> None:
        """Draw the final frame and leave it on screen (nothing if the display never started)."""
        if not self._started:
            return
        self.draw(stats)
        self._live.stop()


Progress = PlainProgress | RichProgress


def choose_mode(
    mode: str, *, quiet: bool, json_summary: bool, stdout_tty: bool, stderr_tty: bool
) -> str:
    """Resolve ``--progress auto`` to ``rich``, ``plain`` or ``off``.

    The display goes to stderr.  ``auto``: rich when stderr is a terminal and
    so is stdout (or stdout carries the ``--json`` summary); otherwise plain
    lines, except under ``--json`` where a non-terminal means a machine reads
    the output and nothing extra is printed.  ``--quiet`` turns it off.
    """
    if quiet or mode == "off":
        return "off"
    if mode != "auto":
        return mode
    if stderr_tty and (stdout_tty or json_summary):
        return "rich"
    return "off" if json_summary else "plain"


def make_progress(
    mode: str,
    model: ProgressModel,
    *,
    stream: TextIO | None = None,
    interval: float = 10.0,
    title: str | None = None,
) -> Progress | None:
    """The display for a resolved mode (``rich`` falls back to plain lines without rich)."""
    if mode == "off":
        return None
    if mode == "rich":
        try:
            from rich.console import Console
        except ImportError:  # pragma: no cover - rich is in the ui extra
            return PlainProgress(model, stream, interval=interval)
        console = Console(file=stream, stderr=stream is None)
        return RichProgress(model, console, title=title)
    return PlainProgress(model, stream, interval=interval)


__all__ = [
    "FIELDS",
    "Field",
    "PlainProgress",
    "ProgressModel",
    "RateMeter",
    "RichProgress",
    "WriteLatency",
    "choose_mode",
    "format_bytes",
    "format_duration",
    "make_progress",
    "plain_line",
]
