"""Prometheus metrics of a runtime, served over HTTP with the official client library.

::

    exporter = MetricsExporter(port=9464)              # binds 127.0.0.1:9464 now
    async with Runtime(..., on_batch_written=exporter.on_batch_written,
                       on_outcome=exporter.on_outcome) as rt:
        exporter.attach(rt.statistics)                 # from the trio thread
        ...
    exporter.close()

Counters and gauges are read from one :meth:`Runtime.statistics` snapshot
per scrape, taken in the trio thread (the HTTP server runs in a thread of its
own and asks trio for it), so a scrape is always consistent and, after the
run, equal to the final summary.  Histograms are fed by the runtime's hooks.

Metric names (see docs/operations.md for the full table)::

    arcflow_scenarios_submitted_total, arcflow_scenarios_completed_total
    arcflow_scenarios_total{status}            outcomes by status (every attempt)
    arcflow_records_written_total, arcflow_records_already_written_total
    arcflow_batches_total{reason}              batches flushed, by reason
    arcflow_batches_written_total, arcflow_write_transactions_total
    arcflow_write_retries_total, arcflow_dead_letters_total
    arcflow_spilled_outcomes_total, arcflow_replayed_outcomes_total
    arcflow_restarts_total{actor}, arcflow_breaker_transitions_total{from,to}
    arcflow_channel_depth{channel}, arcflow_pending_records, arcflow_running_scenarios
    arcflow_breaker_state{state}, arcflow_journal_bytes, arcflow_journal_write_errors_total,
    arcflow_input_tokens_total, arcflow_output_tokens_total, arcflow_cost_usd_total,
    arcflow_batch_size
    arcflow_last_write_latency_seconds, arcflow_elapsed_seconds, arcflow_run_info{run_id}
    arcflow_fleet_claims{state}, arcflow_fleet_live_workers, arcflow_fleet_claimed_total,
    arcflow_fleet_lost_claims_total             (a shared run's worker)
    arcflow_executor_*                          (the executor's statistics(), e.g.
                                                 arcflow_executor_modal_creation_rate)
    arcflow_batch_size_records, arcflow_write_latency_seconds,
    arcflow_scenario_duration_seconds           (histograms)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .errors import ConfigError
from .models import Batch, Outcome
from .stats import RuntimeStatistics

StatsSource = Callable[[], RuntimeStatistics]

BREAKER_STATES = ("closed", "open", "half_open")
STATUSES = ("passed", "failed", "error", "timeout", "cancelled")
FLUSH_REASONS = ("size", "deadline", "shutdown")

BATCH_SIZE_BUCKETS = (
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)


def _require_client() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(
            "--metrics-port needs the Prometheus client library: pip install 'arcflow[ui]'"
        ) from None
    return prometheus_client


class _StatsCollector:
    """Counters and gauges from one statistics snapshot per scrape."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        stats = self.exporter.snapshot()
        if stats is None:
            return
        yield from stats_families(stats, batch_size=self.exporter.batch_size_now(stats))


def stats_families(s: RuntimeStatistics, *, batch_size: int | None = None) -> Iterator[Any]:
    """The counter and gauge families for one snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def counter(name: str, doc: str, value: float) -> Any:
        return CounterMetricFamily(name, doc, value=value)

    def gauge(name: str, doc: str, value: float) -> Any:
        return GaugeMetricFamily(name, doc, value=value)

    def labelled(
        cls: Any,
        name: str,
        doc: str,
        label: str,
        values: dict[str, int],
        known: tuple[str, ...] = (),
    ) -> Any:
        family = cls(name, doc, labels=[label])
        for key in sorted(set(known) | set(values)):
            family.add_metric([key], values.get(key, 0))
        return family

    yield counter(
        "arcflow_scenarios_submitted", "Scenarios accepted by the source or submit().", s.submitted
    )
    yield counter(
        "arcflow_scenarios_completed", "Scenarios whose last attempt has finished.", s.completed
    )
    yield labelled(
        CounterMetricFamily,
        "arcflow_scenarios",
        "Scenario outcomes produced, by status (every attempt counts).",
        "status",
        s.by_status,
        STATUSES,
    )
    yield counter(
        "arcflow_records_written", "Outcome rows inserted into arcflow.outcomes.", s.written
    )
    yield counter(
        "arcflow_records_already_written",
        "Outcomes whose key was already stored (retried or replayed writes).",
        s.already_written,
    )
    yield labelled(
        CounterMetricFamily,
        "arcflow_batches",
        "Batches flushed by the batcher, by reason.",
        "reason",
        s.by_flush_reason,
        FLUSH_REASONS,
    )
    yield counter("arcflow_batches_written", "Batches written to PostgreSQL.", s.batches_written)
    yield counter(
        "arcflow_write_transactions",
        "Write transactions committed (batches, bisected parts, replays).",
        s.write_transactions,
    )
    yield counter(
        "arcflow_write_retries", "Whole-batch write retries after transient failures.", s.retries
    )
    yield counter(
        "arcflow_dead_letters", "Outcomes stored in arcflow.dead_letters.", s.dead_lettered
    )
    yield counter(
        "arcflow_spilled_outcomes", "Outcomes appended to the spill journal.", s.spilled_outcomes
    )
    yield counter(
        "arcflow_replayed_outcomes",
        "Outcomes replayed from the spill journal.",
        s.replayed_outcomes,
    )
    yield labelled(
        CounterMetricFamily, "arcflow_restarts", "Actor restarts, by actor.", "actor", s.restarts
    )
    transitions = CounterMetricFamily(
        "arcflow_breaker_transitions", "Circuit-breaker transitions.", labels=["from", "to"]
    )
    for key, value in sorted(s.breaker_transitions.items()):
        old, _, new = key.partition("->")
        transitions.add_metric([old, new], value)
    yield transitions

    depth = GaugeMetricFamily(
        "arcflow_channel_depth", "Items queued in a channel.", labels=["channel"]
    )
    depth.add_metric(["work"], s.work_queue)
    depth.add_metric(["outcomes"], s.outcome_queue)
    depth.add_metric(["batches"], s.batch_queue)
    yield depth
    yield gauge(
        "arcflow_pending_records",
        "Outcomes waiting in the batcher's partial batch.",
        s.pending_in_batcher,
    )
    yield gauge("arcflow_running_scenarios", "Scenarios running now.", s.running)
    state = GaugeMetricFamily(
        "arcflow_breaker_state", "1 for the breaker's current state.", labels=["state"]
    )
    for name in BREAKER_STATES:
        state.add_metric([name], 1.0 if s.breaker_state == name else 0.0)
    yield state
    yield gauge("arcflow_journal_bytes", "Bytes in the spill journal.", s.journal_bytes)
    yield counter("arcflow_input_tokens", "Tokens in, as outcomes reported them.", s.input_tokens)
    yield counter(
        "arcflow_output_tokens", "Tokens out, as outcomes reported them.", s.output_tokens
    )
    yield counter("arcflow_cost_usd", "Cost in US dollars, as outcomes reported it.", s.cost_usd)
    yield counter(
        "arcflow_journal_write_errors",
        "Spill journal appends that failed (disk full, read-only, I/O error) and were retried.",
        s.journal_write_errors,
    )
    yield gauge(
        "arcflow_batch_size",
        "Current batch size limit (moves with adaptive batching).",
        batch_size if batch_size is not None else s.batch_size,
    )
    yield gauge(
        "arcflow_last_write_latency_seconds",
        "Latency of the last committed write.",
        s.last_write_latency,
    )
    yield gauge("arcflow_elapsed_seconds", "Seconds since the run started.", s.elapsed)
    for name, stat in s.executor.items():  # Executor.statistics(): modal creation rate, refusals
        yield gauge(f"arcflow_executor_{name}", f"Executor statistic {name}.", stat)
    if s.fleet:  # a shared run's worker: the run's claims by state, live workers, its own
        by_state = GaugeMetricFamily(
            "arcflow_fleet_claims", "The shared run's claims by state.", labels=["state"]
        )
        for claim_state in ("pending", "claimed", "done"):
            by_state.add_metric(
                [claim_state], float((s.fleet.get("by_state") or {}).get(claim_state, 0))
            )
        yield by_state
        yield gauge(
            "arcflow_fleet_live_workers",
            "Workers of the shared run with a heartbeat within the lease.",
            s.fleet.get("live_workers", 0),
        )
        yield counter(
            "arcflow_fleet_claimed", "Scenarios this worker claimed.", s.fleet.get("claimed", 0)
        )
        yield counter(
            "arcflow_fleet_lost_claims",
            "Claims this worker found taken by another (its lease had run out).",
            s.fleet.get("lost", 0),
        )
    info = GaugeMetricFamily("arcflow_run_info", "The run being measured.", labels=["run_id"])
    info.add_metric([s.run_id], 1.0)
    yield info


class MetricsExporter:
    """A Prometheus endpoint for one runtime: bind, attach a statistics source, feed the hooks."""

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        batch_size: Callable[[], int] | None = None,
    ) -> None:
        client = _require_client()
        self.host = host
        self.port = port
        self._batch_size = batch_size
        self.registry = client.CollectorRegistry(auto_describe=False)
        self.batch_sizes = client.Histogram(
            "arcflow_batch_size_records",
            "Records per committed write transaction.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.write_latency = client.Histogram(
            "arcflow_write_latency_seconds",
            "Latency of committed write transactions.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scenario_duration = client.Histogram(
            "arcflow_scenario_duration_seconds",
            "Duration of scenario attempts.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StatsCollector(self))
        self._source: StatsSource | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._last: RuntimeStatistics | None = None
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- serving -----------------------------------------------------------------------------

    def bind(self) -> None:
        """Start serving in a daemon thread (raises ConfigError if the address is taken)."""
        client = _require_client()
        try:
            self._server, self._thread = client.start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port} (metrics_port): {exc.strerror or exc}"
            ) from None
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsExporter:
        if self._server is None:
            self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the statistics ------------------------------------------------------------------------

    def attach(self, source: StatsSource) -> None:
        """Read statistics from ``source`` (call from the trio thread that owns the runtime)."""
        self._token = trio.lowlevel.current_trio_token()
        self._source = source
        self.update(source())

    def update(self, stats: RuntimeStatistics) -> None:
        """Remember ``stats`` as the latest snapshot (served once trio has finished)."""
        with self._lock:
            self._last = stats

    def snapshot(self) -> RuntimeStatistics | None:
        """A fresh snapshot from the trio thread, or the last one when trio is not running."""
        source, token = self._source, self._token
        if source is not None and token is not None:
            try:
                if _in_trio_thread():
                    stats = source()
                else:
                    stats = trio.from_thread.run_sync(source, trio_token=token)
            except (trio.RunFinishedError, RuntimeError):
                stats = None
            if stats is not None:
                self.update(stats)
        with self._lock:
            return self._last

    def batch_size_now(self, stats: RuntimeStatistics) -> int:
        return self._batch_size() if self._batch_size is not None else stats.batch_size

    # -- hooks -----------------------------------------------------------------------------------

    def on_batch_written(self, batch: Batch, inserted: int, latency: float) -> None:
        """The writer's hook: one observation per committed write."""
        self.batch_sizes.observe(len(batch))
        self.write_latency.observe(latency)

    def on_outcome(self, outcome: Outcome) -> None:
        """The producers' hook: one observation per attempt."""
        self.scenario_duration.observe(max(0.0, outcome.duration_ms / 1000.0))


def _in_trio_thread() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


__all__ = ["MetricsExporter", "stats_families"]
