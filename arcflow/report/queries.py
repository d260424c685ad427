"""What a report reads: the SQL, the run listing and one run's report, from PostgreSQL.

Counts by status are over each scenario's *latest* attempt (what the run
concluded); errors are grouped over *every* attempt (what went wrong on the way).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._trio_asyncio import import_trio_asyncio
from ..errors import ConfigError, DatabaseUnavailable, TransientWriteError, arcflow_errors_unwrapped
from ..store import Store, open_store
from ..store.dsn import redact_text
from ..store.schema import LATEST_VERSION

log = logging.getLogger("arcflow.report")

STATUSES = ("passed", "failed", "error", "timeout", "cancelled")

# -- queries -------------------------------------------------------------------------------------

#: What one conclusion of a run is keyed by: a scenario's repeat (``--epochs K`` runs
#: each scenario K times; one epoch, 1, without it).  Every "per scenario" query (counts,
#: tags, diff pairs, JUnit test cases, the gates) selects through :func:`concluded`.
CONCLUSION_KEY: tuple[str, ...] = ("scenario_id", "epoch")


def key_label(row: Mapping[str, Any], *, epochs: bool) -> str:
    """A conclusion's name: the scenario id, with its epoch when the listing has several."""
    sid = str(row["scenario_id"])
    return f"{sid} (epoch {row['epoch']})" if epochs else sid


def has_epochs(rows: Iterable[Mapping[str, Any]]) -> bool:
    """True if any row is of an epoch other than the first (labels then name the epoch)."""
    return any((r.get("epoch") or 1) != 1 for r in rows)


def concluded(columns: str, *, run: str = "$1", alias: str = "o", where: str = "") -> str:
    """SQL: each scenario's (each epoch's) conclusion in run ``run``: its latest *final* attempt.

    A scenario with no final attempt (its run stopped between a retryable
    attempt and the next one, or a cancelled attempt) concludes with its
    latest attempt.  ``columns`` are selected from ``arcflow.outcomes {alias}``;
    ``where`` adds conditions (``AND ...``), e.g. keyset pagination on the key.
    """
    key = ", ".join(f"{alias}.{k}" for k in CONCLUSION_KEY)
    return (
        f"SELECT DISTINCT ON ({key}) {columns} FROM arcflow.outcomes {alias} "
        f"WHERE {alias}.run_id = {run}{(' ' + where) if where else ''} "
        f"ORDER BY {key}, {alias}.final DESC, {alias}.attempt DESC"
    )


_LATEST = concluded("o.scenario_id, o.epoch, o.attempt, o.status, o.tags")

_STATUS_COUNTS = ", ".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)

RUNS_SQL = f"""
SELECT r.run_id, r.suite, r.status, r.started_at, r.finished_at, r.scenarios,
       coalesce(c.done, 0) AS done, {", ".join(f"coalesce(c.{s}, 0) AS {s}" for s in STATUSES)}
FROM arcflow.runs r
LEFT JOIN LATERAL (
    SELECT count(*) AS done, {_STATUS_COUNTS}
    FROM ({concluded("o.status", run="r.run_id")}) latest
) c ON true
WHERE ($2::text IS NULL OR r.suite = $2) AND ($3::text IS NULL OR r.status = $3)
ORDER BY r.started_at DESC, r.run_id
LIMIT $1
"""

BY_STATUS_SQL = (
    f"WITH latest AS ({_LATEST}) SELECT status, count(*) AS n FROM latest GROUP BY status"
)

BY_TAG_SQL = f"""
WITH latest AS ({_LATEST})
SELECT tag, count(*) AS scenarios, {_STATUS_COUNTS}
FROM latest, unnest(tags) AS tag
GROUP BY tag ORDER BY tag
"""

ATTEMPTS_SQL = "SELECT count(*) AS attempts, coalesce(sum(duration_ms), 0) AS total_ms FROM arcflow.outcomes WHERE run_id = $1"

SLOWEST_SQL = """
SELECT scenario_id, attempt, status, duration_ms FROM arcflow.outcomes
WHERE run_id = $1 ORDER BY duration_ms DESC, scenario_id, attempt LIMIT $2
"""

ERRORS_SQL = """
SELECT coalesce(error_type, status) AS error_type, count(*) AS attempts,
       count(DISTINCT scenario_id) AS scenarios,
       (array_agg(scenario_id ORDER BY scenario_id, attempt))[1] AS example_scenario,
       (array_agg(error_message ORDER BY scenario_id, attempt))[1] AS example_message
FROM arcflow.outcomes WHERE run_id = $1 AND status IN ('error', 'timeout')
GROUP BY 1 ORDER BY attempts DESC, 1
"""

BATCHES_SQL = """
SELECT count(*) AS batches, coalesce(sum(size), 0) AS records, coalesce(sum(inserted), 0) AS inserted,
       min(size) AS min_size, max(size) AS max_size, avg(size)::float8 AS mean_size,
       min(written_at) AS first_at, max(written_at) AS last_at
FROM arcflow.batches WHERE run_id = $1
"""

BATCH_GROUPS_SQL = "SELECT {col} AS key, count(*) AS n FROM arcflow.batches WHERE run_id = $1 GROUP BY 1 ORDER BY 1"

SERIES_SQL = """
SELECT extract(epoch FROM written_at)::float8 AS t, inserted FROM arcflow.batches
WHERE run_id = $1 ORDER BY written_at
"""

DEAD_LETTERS_SQL = "SELECT count(*) FROM arcflow.dead_letters WHERE run_id = $1"

#: Tokens and cost of every attempt (each attempt was paid for).
USAGE_SQL = """
SELECT coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
       coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
       coalesce(sum(cost_usd), 0)::float8 AS cost_usd
FROM arcflow.outcomes WHERE run_id = $1
"""

#: Per scenario across its epochs: epochs concluded, passes, mean and variance of the score.
_PER_SCENARIO = f"""
SELECT scenario_id, count(*) AS n, count(*) FILTER (WHERE status = 'passed') AS c,
       avg(score) AS mean_score, var_pop(score) AS score_var
FROM ({concluded("o.scenario_id, o.epoch, o.status, o.score")}) k
GROUP BY scenario_id
"""

#: How many scenarios had n epochs with c passes: enough for exact pass@k at any size.
EPOCH_HISTOGRAM_SQL = f"""
SELECT n, c, count(*) AS scenarios, avg(mean_score) AS mean_score, avg(score_var) AS mean_var
FROM ({_PER_SCENARIO}) p GROUP BY n, c ORDER BY n, c
"""

#: The scenarios least consistent across epochs: some passed and some did not, then the
#: widest score spread; $2 at most.
VARIABLE_SQL = f"""
SELECT scenario_id, n AS epochs, c AS passed, mean_score, sqrt(score_var) AS score_stddev
FROM ({_PER_SCENARIO}) p
WHERE n > 1 AND ((c > 0 AND c < n) OR coalesce(score_var, 0) > 0)
ORDER BY (c > 0 AND c < n) DESC, score_var DESC NULLS LAST, scenario_id
LIMIT $2
"""

MAX_EPOCH_SQL = "SELECT coalesce(max(epoch), 1) FROM arcflow.outcomes WHERE run_id = $1"

_PARTITION = ", ".join(f"o.{k}" for k in CONCLUSION_KEY)

#: One row per scenario (its conclusion), the ones that did not pass first; $2 rows at
#: most; error message, output and executor details cut to $3 characters.
SCENARIOS_SQL = f"""
SELECT * FROM ({
    concluded(
        "o.scenario_id, o.epoch, o.attempt, o.final, o.status, o.score, o.duration_ms, o.tags, "
        "o.error_type, left(o.error_message, $3) AS error_message, "
        "left(o.output::text, $3) AS output, left(o.executor::text, $3) AS executor, "
        f"count(*) OVER (PARTITION BY {_PARTITION}) AS attempts"
    )
}) c
ORDER BY (status = 'passed'), {", ".join(CONCLUSION_KEY)}
LIMIT $2
"""

#: Every attempt of one scenario in one run, by epoch, the latest first.
ATTEMPTS_OF_SQL = """
SELECT scenario_id, epoch, attempt, final, status, score, output::text AS output, error_type,
       error_message, started_at, finished_at, duration_ms, executor::text AS executor, worker,
       tags, scenario_hash, batch_id, recorded_at
FROM arcflow.outcomes WHERE run_id = $1 AND scenario_id = $2 ORDER BY epoch, attempt DESC
"""

# -- opening the database ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_report_store(db: str | None, data_dir: Path | str) -> AsyncIterator[Store]:
    """A connected Store for reading reports (never creates a database or the schema).

    A schema that an older arcflow made is upgraded first (as the next run
    would do): the queries read the columns of this version.  Opens a
    trio-asyncio loop of its own; arcflow errors raised inside the block come
    out as themselves, not wrapped in the loop's exception group.
    """
    trio_asyncio = import_trio_asyncio()  # here: importing it patches asyncio
    with arcflow_errors_unwrapped():
        async with trio_asyncio.open_loop():
            store = await open_store(db, data_dir, for_reading=True)
            try:
                await _upgrade_if_older(store)
                yield store
            finally:
                await store.aclose()


async def _upgrade_if_older(store: Store) -> None:
    version = await store.fetchval("SELECT coalesce(max(version), 0) FROM arcflow.schema_version")
    if version >= LATEST_VERSION:
        return
    log.warning(
        "the arcflow schema is at version %d, older than this arcflow's %d: upgrading it",
        version,
        LATEST_VERSION,
    )
    try:
        await store.migrate()
    except (TransientWriteError, DatabaseUnavailable):
        raise
    except Exception as exc:  # no right to alter the schema, most likely
        raise DatabaseUnavailable(
            f"the arcflow schema in {store.redacted_dsn} is at version {version}, older than this "
            f"arcflow's {LATEST_VERSION}, and upgrading it failed: "
            f"{redact_text(f'{type(exc).__name__}: {exc}', store.dsn)}; run arcflow once with a "
            "user that may alter it"
        ) from None


# -- runs ---------------------------------------------------------------------------------------


async def list_runs(
    store: Store, *, limit: int = 20, suite: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, suite, status, times, planned scenarios, counts by status."""
    if limit < 1:
        raise ConfigError(f"invalid --limit={limit}: must be a whole number >= 1")
    rows = await store.fetch(RUNS_SQL, limit, suite, status)
    return [dict(r) for r in rows]


# -- one run ------------------------------------------------------------------------------------------


@attrs.frozen
class Report:
    """Everything ``report`` shows about one run."""

    run: dict[str, Any]
    totals: dict[str, Any]
    by_status: dict[str, int]
    by_tag: list[dict[str, Any]]
    slowest: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    batches: dict[str, Any]
    #: Rows written per time bucket: ``{"t": seconds since the first write, "rows": n, "width": s}``.
    throughput: list[dict[str, Any]]
    #: Tokens and cost over every attempt: ``input_tokens``, ``output_tokens``, ``cost_usd``.
    usage: dict[str, Any] = attrs.field(factory=dict)
    #: A run of several epochs (``--epochs K``): pass@k, consistency and score spread across
    #: epochs, and the least consistent scenarios (see :func:`epoch_summary`); None otherwise.
    epochs: dict[str, Any] | None = None
    #: A shared run (``run --shared``): each worker that joined it (host, pid, state,
    #: claimed, done, rate, last heartbeat; see :class:`arcflow.fleet.WorkerStatus`) and the
    #: claims by state; None for a run of one process.
    fleet: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


async def run_fleet(store: Store, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """A shared run's workers and claims (:func:`arcflow.fleet.fleet_status`), else None."""
    config = run.get("config") or {}
    if isinstance(config, str):
        config = json.loads(config)
    if not config.get("shared"):
        return None
    from ..fleet import fleet_status

    status = await fleet_status(store, run["run_id"])
    return {
        "lease_s": status.lease,
        "claims": status.claims,
        "workers": status.as_dict()["workers"],
    }


async def build_report(store: Store, run_id: str, *, slowest: int = 10) -> Report:
    """Read one run's report from the database (raises ConfigError if there is no such run)."""
    run = await store.get_run(run_id)
    if run is None:
        raise ConfigError(
            f"no run {run_id!r} in the database; `python -m arcflow runs` lists the runs there"
        )
    by_status = {s: 0 for s in STATUSES}
    by_status.update({r["status"]: r["n"] for r in await store.fetch(BY_STATUS_SQL, run_id)})
    attempts = (await store.fetch(ATTEMPTS_SQL, run_id))[0]
    done = sum(by_status.values())
    dead = int(await store.fetchval(DEAD_LETTERS_SQL, run_id))
    totals = {
        "scenarios_planned": run.get("scenarios"),
        "scenarios_with_outcome": done,
        "attempts": attempts["attempts"],
        "passed": by_status["passed"],
        "pass_rate": _rate(by_status["passed"], done),
        "dead_letters": dead,
    }
    by_tag = [
        {**dict(r), "pass_rate": _rate(r["passed"], r["scenarios"])}
        for r in await store.fetch(BY_TAG_SQL, run_id)
    ]
    return Report(
        run=_run_info(run),
        totals=totals,
        by_status=by_status,
        by_tag=by_tag,
        slowest=[dict(r) for r in await store.fetch(SLOWEST_SQL, run_id, slowest)],
        errors=[dict(r) for r in await store.fetch(ERRORS_SQL, run_id)],
        batches=await _batch_stats(store, run_id),
        throughput=throughput_series(
            [(r["t"], r["inserted"]) for r in await store.fetch(SERIES_SQL, run_id)]
        ),
        usage=dict((await store.fetch(USAGE_SQL, run_id))[0]),
        epochs=await _epochs(store, run_id),
        fleet=await run_fleet(store, run),
    )


async def _epochs(store: Store, run_id: str, *, listed: int = 10) -> dict[str, Any] | None:
    if int(await store.fetchval(MAX_EPOCH_SQL, run_id)) <= 1:
        return None
    histogram = [dict(r) for r in await store.fetch(EPOCH_HISTOGRAM_SQL, run_id)]
    variable = [dict(r) for r in await store.fetch(VARIABLE_SQL, run_id, listed)]
    return epoch_summary(histogram, variable)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n tries with c passes: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} tries, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def epoch_summary(
    histogram: Sequence[Mapping[str, Any]], variable: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """pass@k for every k up to the fewest epochs a scenario has, pass^k, and score spread.

    ``histogram`` rows are ``{n, c, scenarios, mean_score, mean_var}``: how many
    scenarios concluded ``n`` epochs with ``c`` passes.  ``pass@k`` is the mean
    over scenarios of the unbiased estimate (the chance that at least one of k
    tries passes); ``pass^k`` the chance that all k do (``C(c,k)/C(n,k)``);
    ``consistent`` the share of scenarios that passed every epoch or none.
    """
    total = sum(int(h["scenarios"]) for h in histogram)
    if not total:
        return {"scenarios": 0}
    k_max = min(int(h["n"]) for h in histogram)
    pass_at: dict[str, float] = {}
    pass_all: dict[str, float] = {}
    for k in range(1, k_max + 1):
        pass_at[str(k)] = round(
            sum(pass_at_k(int(h["n"]), int(h["c"]), k) * int(h["scenarios"]) for h in histogram)
            / total,
            4,
        )
        pass_all[str(k)] = round(
            sum(
                math.comb(int(h["c"]), k) / math.comb(int(h["n"]), k) * int(h["scenarios"])
                for h in histogram
            )
            / total,
            4,
        )
    consistent = sum(int(h["scenarios"]) for h in histogram if int(h["c"]) in (0, int(h["n"])))
    scored = [h for h in histogram if h["mean_score"] is not None]
    weight = sum(int(h["scenarios"]) for h in scored)
    return {
        "scenarios": total,
        "epochs_min": k_max,
        "epochs_max": max(int(h["n"]) for h in histogram),
        "pass_at_k": pass_at,
        "pass_all_k": pass_all,
        "consistent": round(consistent / total, 4),
        "flaky_scenarios": total - consistent,
        "mean_score": (
            round(sum(float(h["mean_score"]) * int(h["scenarios"]) for h in scored) / weight, 4)
            if weight
            else None
        ),
        "mean_score_variance": (
            round(sum(float(h["mean_var"] or 0) * int(h["scenarios"]) for h in scored) / weight, 6)
            if weight
            else None
        ),
        "least_consistent": [
            {
                "scenario_id": v["scenario_id"],
                "epochs": int(v["epochs"]),
                "passed": int(v["passed"]),
                "mean_score": None if v["mean_score"] is None else round(float(v["mean_score"]), 4),
                "score_stddev": (
                    None if v["score_stddev"] is None else round(float(v["score_stddev"]), 4)
                ),
            }
            for v in variable
        ],
    }


async def scenario_rows(
    store: Store, run_id: str, *, limit: int = 5000, detail_chars: int = 4000
) -> list[dict[str, Any]]:
    """Each scenario's conclusion (at most ``limit``, the ones that did not pass first), for
    the report's scenario table; long texts cut to ``detail_chars`` characters."""
    rows = await store.fetch(SCENARIOS_SQL, run_id, limit, detail_chars)
    return [{**dict(r), "tags": list(r["tags"] or [])} for r in rows]


async def scenario_attempts(store: Store, run_id: str, scenario_id: str) -> list[dict[str, Any]]:
    """Every attempt of one scenario in one run, the latest first (empty if none)."""
    rows = await store.fetch(ATTEMPTS_OF_SQL, run_id, scenario_id)
    return [{**dict(r), "tags": list(r["tags"] or [])} for r in rows]


def _rate(part: int, whole: int | None) -> float | None:
    return round(part / whole, 4) if whole else None


def _run_info(run: Mapping[str, Any]) -> dict[str, Any]:
    executor = run.get("executor")
    if isinstance(executor, str):
        executor = json.loads(executor)
    return {
        "run_id": run["run_id"],
        "suite": run.get("suite"),
        "status": run.get("status"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "executor": (executor or {}).get("kind"),
    }


async def _batch_stats(store: Store, run_id: str) -> dict[str, Any]:
    row = dict((await store.fetch(BATCHES_SQL, run_id))[0])
    first, last = row.pop("first_at"), row.pop("last_at")
    span = (last - first).total_seconds() if first and last else 0.0
    row["mean_size"] = round(row["mean_size"], 2) if row["mean_size"] is not None else None
    row["span_s"] = round(span, 3)
    row["rows_per_s"] = round(row["inserted"] / span, 1) if span > 0 else None
    for col, key in (("reason", "by_reason"), ("source", "by_source")):
        rows = await store.fetch(BATCH_GROUPS_SQL.format(col=col), run_id)
        row[key] = {r["key"]: r["n"] for r in rows}
    return row


def throughput_series(
    points: Sequence[tuple[float, int]], *, max_buckets: int = 60
) -> list[dict[str, Any]]:
    """Rows written per bucket of time; at most ``max_buckets`` buckets of at least 1 s."""
    if not points:
        return []
    start = points[0][0]
    span = points[-1][0] - start
    width = max(1.0, math.ceil(span / max_buckets)) if span > 0 else 1.0
    count = int(span // width) + 1
    rows = [0] * count
    for t, n in points:
        rows[min(count - 1, int((t - start) // width))] += n
    return [{"t": i * width, "rows": n, "width": width} for i, n in enumerate(rows)]
