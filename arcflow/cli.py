"""``python -m arcflow``: the command line.

Commands: ``run`` (run a scenario file), ``runs`` (list runs), ``report RUN_ID``
(one run's report) and ``config`` (the effective configuration).  Every
option can also come from ``ARCFLOW_*`` environment variables or a config
file (``arcflow.toml``, or ``[tool.arcflow]`` in ``pyproject.toml``); see
:mod:`arcflow.settings`.

Exit codes: 0 every outcome written (or dead-lettered); 1 the run failed
(an actor crashed past its restart intensity); 2 bad input, bad options or an
unreachable database, before any scenario ran; 3 some outcomes are still in the
spill journal (run again with ``--resume RUN_ID``); 130 stopped by a second
signal (running scenarios were cancelled).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from ._version import __version__
from .adaptive import AdaptiveBatchSize
from .config import RuntimeConfig
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    ExecutorSpecError,
    RestartIntensityExceeded,
    ResumeError,
    RunInUse,
    ScenarioFileError,
    primary_error,
)
from .hosting import tune_gc
from .logs import configure_logging, log_context
from .models import Batch, BatchHook, OutcomeHook
from .runs import read_prior
from .runtime import Runtime
from .scenarios import validate_file
from .selection import Selection, parse_shard
from .settings import OPTIONS, OptionSpec, Settings, format_settings, load_settings
from .store.dsn import redact_text

log = logging.getLogger("arcflow.cli")
batch_log = logging.getLogger("arcflow.batches")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

#: Options that only reading commands (runs, report) use.
READ_KEYS = ("db", "data_dir", "log_level", "log_format")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with the usual message
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"arcflow: error: {message}\n")


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else convert(text)

    parse.__name__ = convert.__name__
    return parse


def _add_option(parser: argparse.ArgumentParser, spec: OptionSpec) -> None:
    """One settings option as a flag; absent flags stay out of the namespace (lower layers win)."""
    if spec.default is None:
        help_text = f"{spec.help} ({spec.env})"
    else:
        help_text = f"{spec.help} (default {spec.default}; {spec.env})"
    kwargs: dict[str, Any] = {"dest": spec.key, "default": argparse.SUPPRESS, "help": help_text}
    if spec.kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif spec.kind in ("names", "pairs"):
        kwargs["action"] = "append"
        kwargs["metavar"] = spec.metavar or "VALUE"
    elif spec.kind == "choice":
        kwargs["choices"] = spec.choices
        kwargs["type"] = str.upper if spec.key == "log_level" else str.lower
    else:
        kwargs["type"] = {
            "int": int,
            "float": float,
            "optional_int": _optional(int),
            "optional_float": _optional(float),
            "path": Path,
        }.get(spec.kind, str)
        kwargs["metavar"] = spec.metavar or "N"
    parser.add_argument(spec.flag, **kwargs)


def _add_settings(parser: argparse.ArgumentParser, keys: Sequence[str]) -> None:
    group = parser.add_argument_group(
        "configuration",
        "also ARCFLOW_* variables or arcflow.toml; precedence: flags > environment > file > defaults",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: ./arcflow.toml, then "
        "[tool.arcflow] in ./pyproject.toml; $ARCFLOW_CONFIG)",
    )
    for key in keys:
        _add_option(group, OPTIONS[key])  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m arcflow",
        description="Run scenarios concurrently and record every outcome in PostgreSQL, in batches.",
    )
    parser.add_argument("--version", action="version", version=f"arcflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a scenario file and record the outcomes",
        description="Run every scenario of a JSONL file through an executor; outcomes go to "
        "PostgreSQL in batches (one transaction per batch).",
    )
    run.add_argument("scenarios", type=Path, help="JSONL file, one scenario per line")
    run.add_argument("--run-id", help="id of this run (default: a new one)")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue RUN_ID: replay its journal, skip finished scenarios",
    )
    run.add_argument(
        "--force", action="store_true", help="with --resume: accept scenarios whose content changed"
    )
    run.add_argument(
        "--retry-errors",
        action="store_true",
        help="with --resume: also re-run error and timeout outcomes",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object, nothing else on stdout",
    )
    run.add_argument(
        "--quiet", action="store_true", help="print nothing but errors (no progress display)"
    )
    _add_selection(run)
    run.add_argument(
        "--shared",
        action="store_true",
        help="put the scenarios in PostgreSQL (arcflow.claims) and work on them; other "
        "machines join with `python -m arcflow work RUN_ID`",
    )
    _add_fail_under(run)
    _add_settings(run, list(OPTIONS))
    run.set_defaults(func=cmd_run)

    work = sub.add_parser(
        "work",
        help="join a shared run as one more worker",
        description="Claim and run the scenarios of a shared run (`run FILE --shared`), with the "
        "executor settings the run recorded (flags, ARCFLOW_* and arcflow.toml override them).",
    )
    work.add_argument("run_id", metavar="RUN_ID", help="the shared run")
    work.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    work.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_fail_under(work)
    _add_settings(work, list(OPTIONS))
    work.set_defaults(func=cmd_work)

    workers = sub.add_parser(
        "workers",
        help="a shared run's workers and claims",
        description="Who works on a shared run: each worker's state (live, stopped, lost), last "
        "heartbeat, claims and finished scenarios, and the run's claims by state.",
    )
    workers.add_argument("run_id", metavar="RUN_ID", help="the shared run")
    workers.add_argument("--json", action="store_true", help="print one JSON object")
    _add_settings(workers, READ_KEYS)
    workers.set_defaults(func=cmd_workers)

    runs = sub.add_parser(
        "runs",
        help="list runs",
        description="List runs, newest first, with counts by status "
        "(each scenario's conclusion: its latest final attempt).",
    )
    runs.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    runs.add_argument("--suite", help="only runs of this suite")
    runs.add_argument(
        "--status",
        help="only runs with this status (running, finished, stopped, failed, incomplete)",
    )
    runs.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default table)",
    )
    _add_settings(runs, READ_KEYS)
    runs.set_defaults(func=cmd_runs)

    report = sub.add_parser(
        "report",
        help="report one run",
        description="One run's pass rate, counts by status and "
        "by tag, slowest scenarios, errors by type and batch statistics.",
    )
    report.add_argument("run_id", metavar="RUN_ID", help="the run (see `python -m arcflow runs`)")
    report.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default table)",
    )
    report.add_argument(
        "--html",
        type=Path,
        metavar="FILE",
        help="also write a self-contained HTML page with charts",
    )
    report.add_argument(
        "--slowest",
        type=int,
        default=10,
        metavar="N",
        help="how many slowest attempts (default 10)",
    )
    _add_fail_under(report)
    _add_settings(report, READ_KEYS)
    report.set_defaults(func=cmd_report)

    config = sub.add_parser(
        "config",
        help="print the effective configuration",
        description="Print every option's effective value and where it came from "
        "(flag, environment, file or default), secrets redacted.",
    )
    config.add_argument(
        "--format", choices=("toml", "json"), default="toml", help="output format (default toml)"
    )
    _add_settings(config, list(OPTIONS))
    config.set_defaults(func=cmd_config)
    _add_modal_command(sub)
    _add_report_commands(sub)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags given on the command line over ``ARCFLOW_*`` over the config file over defaults."""
    flags = {k: v for k, v in vars(args).items() if k in OPTIONS}
    return load_settings(flags, config_file=getattr(args, "config", None))


def process_uptime() -> float:
    """Seconds since this process started (interpreter start-up and imports included).

    Read from ``/proc`` where there is one; else the time since this module was imported.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        started_ticks = int(fields[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


def _print_summary(summary: dict[str, Any], out: TextIO) -> None:
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_status"].items())) or "none"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["by_flush_reason"].items())) or "none"
    lines = [
        f"run {summary['run_id']}",
        f"  scenarios     {summary['scenarios']} ({by_status})",
        f"  batches       {summary['batches']} ({reasons})",
        f"  written       {summary['written']} rows in {summary['write_transactions']} write transactions"
        + (f", {summary['already_written']} already stored" if summary["already_written"] else ""),
        f"  dead letters  {summary['dead_lettered']}",
        f"  throughput    {summary['throughput_per_s']:.1f} rows/s over {summary['elapsed_s']:.2f}s"
        + (
            f" of running; {summary['wall_s']:.2f}s in all, from start-up to the end"
            if "wall_s" in summary
            else ""
        ),
    ]
    if summary["spilled_outcomes"] or summary["in_journal_batches"]:
        lines.append(
            f"  journal       {summary['spilled_outcomes']} spilled, {summary['replayed_outcomes']} replayed, "
            f"{summary['in_journal_batches']} batches still there"
        )
    if summary["retries"] or summary["breaker_transitions"]:
        lines.append(
            f"  retries       {summary['retries']}; breaker {summary['breaker_transitions'] or 'never opened'}"
        )
    if summary["restarts"]:
        lines.append(f"  restarts      {summary['restarts']}")
    if summary["input_tokens"] or summary["output_tokens"] or summary["cost_usd"]:
        lines.append(
            f"  usage         {summary['input_tokens']:,} tokens in, "
            f"{summary['output_tokens']:,} out, ${summary['cost_usd']:,.4f}"
            + (" (the budget is spent: the rest did not run)" if summary["budget_spent"] else "")
        )
    out.write("\n".join(lines) + "\n")


async def _watch_signals(rt: Runtime, state: dict[str, bool], *, task_status: Any) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            if not state["stopping"]:
                state["stopping"] = True
                print(
                    f"arcflow: {signal.Signals(signum).name}: finishing running scenarios "
                    f"(up to {rt.config.grace:g}s); send it again to cancel them",
                    file=sys.stderr,
                )
                rt.request_stop()
            else:
                state["hard"] = True
                print(
                    f"arcflow: {signal.Signals(signum).name} again: cancelling running scenarios",
                    file=sys.stderr,
                )
                rt.cancel_running()


# -- observers of a run: progress, metrics, adaptive batch size, batch logs ---------------------------


class Observers:
    """What watches one run: the live display, the metrics endpoint, adaptive batching, batch logs.

    Each hands the runtime its hooks (``hooks()``: the lists for
    ``on_outcome`` and ``on_batch_written``); the runtime calls them in turn.
    """

    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        from .progress import ProgressModel, choose_mode, make_progress

        self.adaptive = (
            AdaptiveBatchSize(settings.adaptive_config(), initial=settings.batch_size)
            if settings.adaptive_batching
            else None
        )
        self.metrics = None
        if settings.metrics_port is not None:
            from .metrics import MetricsExporter

            self.metrics = MetricsExporter(
                port=settings.metrics_port,
                host=settings.metrics_host,
                batch_size=self.adaptive.current if self.adaptive is not None else None,
            )
        mode = choose_mode(
            settings.progress,
            quiet=args.quiet,
            json_summary=args.json,
            stdout_tty=sys.stdout.isatty(),
            stderr_tty=sys.stderr.isatty(),
        )
        self.model = ProgressModel(adaptive=self.adaptive)
        self.progress = make_progress(mode, self.model, interval=settings.progress_interval)

    def hooks(self) -> dict[str, Any]:
        """The runtime's hook lists, and the adaptive batch size source if any."""
        on_batch: list[BatchHook] = [_log_batch]
        on_outcome: list[OutcomeHook] = []
        for observer in (self.progress, self.metrics, self.adaptive):
            if observer is not None:
                on_batch.append(observer.on_batch_written)
        if self.metrics is not None:
            on_outcome.append(self.metrics.on_outcome)
        return {
            "on_batch_written": on_batch,
            "on_outcome": on_outcome,
            "batch_size_source": self.adaptive.current if self.adaptive is not None else None,
        }

    def start(self, rt: Runtime, nursery: trio.Nursery, total: int | None) -> None:
        """Begin displaying and serving (from inside ``async with rt``)."""
        self.model.total = total
        if self.metrics is not None:
            self.metrics.attach(rt.statistics)
        if self.progress is not None:
            nursery.start_soon(self.progress.run, rt.statistics)

    def finish(self, rt: Runtime) -> None:
        """The final frame, and the final values for the metrics endpoint."""
        if not rt.started:
            return
        stats = rt.statistics()
        if self.metrics is not None:
            self.metrics.update(stats)
        if self.progress is not None:
            self.progress.finish(stats)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _log_batch(batch: Batch, inserted: int, latency: float) -> None:
    if batch_log.isEnabledFor(logging.DEBUG):
        run_id = batch.outcomes[0].run_id if batch.outcomes else "-"
        batch_log.debug(
            "run %s batch %s: wrote %d new rows of %d (%s) in %.1f ms",
            run_id,
            batch.id,
            inserted,
            len(batch),
            batch.reason.value,
            latency * 1000,
        )


async def _linger(seconds: float) -> None:
    """Keep the process (and the metrics endpoint) up for ``seconds``, or until a signal."""
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.move_on_after(seconds),
    ):
        async for _ in signals:
            return


# -- run ---------------------------------------------------------------------------------------------


def _add_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "choosing scenarios",
        "applied in this order: ids, tags, shard, --only-failed, sample, limit",
    )
    group.add_argument(
        "--id",
        action="append",
        default=[],
        metavar="ID",
        help="only this scenario (repeatable; @FILE reads ids, one per line)",
    )
    group.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="only scenarios with this tag (repeatable: any of them)",
    )
    group.add_argument(
        "--exclude-tag",
        action="append",
        default=[],
        metavar="TAG",
        help="no scenario with this tag (repeatable)",
    )
    group.add_argument(
        "--shard",
        metavar="I/N",
        help="only shard I of N (a split by id hash: N machines, one suite, no overlap)",
    )
    group.add_argument(
        "--only-failed",
        metavar="RUN_ID",
        help="only the scenarios that ended failed, error or timeout in RUN_ID",
    )
    group.add_argument(
        "--sample", type=int, metavar="N", help="a reproducible sample of N scenarios"
    )
    group.add_argument(
        "--seed", type=int, default=None, metavar="S", help="the sample's seed (default 0)"
    )
    group.add_argument("--limit", type=int, metavar="N", help="at most N scenarios, the first ones")  # fmt: skip


def _selection_from(args: argparse.Namespace) -> Selection | None:
    """The selection the flags give, or None if none is given."""
    ids: list[str] = []
    for item in args.id:
        if item.startswith("@"):
            path = Path(item[1:])
            try:
                ids += [
                    line.strip()
                    for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip()
                ]
            except OSError as exc:
                raise ConfigError(
                    f"--id {item}: cannot read {path}: {exc.strerror or exc}"
                ) from None
        else:
            ids.append(item)
    given = any([ids, args.tag, args.exclude_tag, args.shard, args.only_failed,
                 args.sample is not None, args.seed is not None, args.limit is not None])  # fmt: skip
    if not given:
        return None
    if args.seed is not None and args.sample is None:
        raise ConfigError("--seed only makes sense with --sample N")
    for name in ("sample", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"invalid --{name}={value}: must be a whole number >= 1")
    return Selection(
        ids=ids,
        tags=args.tag,
        exclude_tags=args.exclude_tag,
        shard=parse_shard(args.shard) if args.shard else None,
        only_failed=args.only_failed,
        sample=args.sample,
        seed=args.seed or 0,
        limit=args.limit,
    )


async def _choose(
    args: argparse.Namespace, settings: Settings, config: RuntimeConfig
) -> tuple[Selection | None, RuntimeConfig]:
    """The run's selection and epochs: the flags', or a resumed run's own; --only-failed resolved."""
    selection = _selection_from(args)
    if args.resume is None and (selection is None or selection.only_failed is None):
        return selection, config
    prior = await read_prior(
        settings.db,
        settings.data_dir,
        resume=args.resume,
        only_failed=selection.only_failed if selection is not None else None,
    )
    failed = prior.failed
    if args.resume is not None and prior.selection is not None:
        if selection is not None and selection != prior.selection:
            raise ResumeError(
                f"run {args.resume} took {prior.selection.describe()}; resume it with the same "
                "selection flags, or with none (it keeps its own)"
            )
        selection = prior.selection
        if selection.only_failed is not None:
            failed = (
                await read_prior(
                    settings.db, settings.data_dir, resume=None, only_failed=selection.only_failed
                )
            ).failed
    if args.resume is not None and prior.epochs is not None:
        if "epochs" in settings.sources and settings.epochs != prior.epochs:
            raise ResumeError(
                f"run {args.resume} runs {prior.epochs} epoch(s); resume it with --epochs "
                f"{prior.epochs}, or without --epochs"
            )
        config = attrs.evolve(config, epochs=prior.epochs)
    if selection is not None and failed is not None:
        selection = attrs.evolve(selection, failed_ids=failed)
    return selection, config


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    executor = settings.make_executor()
    selection, config = await _choose(args, settings, settings.runtime_config())
    suite = validate_file(args.scenarios, selection)
    if suite.count == 0:
        raise ConfigError(
            f"the selection takes none of the {suite.total} scenarios of {args.scenarios}"
        )
    if args.resume and args.run_id and args.resume != args.run_id:
        raise ConfigError("--resume RUN_ID and --run-id disagree; give one of them")
    if (args.force or args.retry_errors) and not args.resume:
        raise ConfigError("--force and --retry-errors only make sense with --resume RUN_ID")
    observers = Observers(settings, args)
    if observers.metrics is not None:
        observers.metrics.bind()  # a taken port fails here, before anything runs
    try:
        return await _run_observed(args, settings, config, executor, suite, observers)
    finally:
        observers.close()


#: The settings a shared run records for the workers that join it (flags etc. override them).
WORKER_KEYS = (
    "executor", "concurrency", "timeout", "attempts", "attempt_backoff", "threads", "pass_env",
    "modal_app", "modal_image", "modal_pip", "modal_secrets", "modal_cpu", "modal_memory",
    "modal_creation_rate", "modal_max_starting", "lease", "batch_size", "flush_interval",
    "modal_fn_environment", "modal_pool", "modal_pool_max_uses",
)  # fmt: skip


async def _work_file(
    rt: Runtime,
    args: argparse.Namespace,
    suite: Any,
    executor: Any,
    observers: Observers,
    nursery: trio.Nursery,
    chatty: bool,
) -> ScenarioFileError | None:
    """Run the scenario file (resumed if asked); a change of the file under the run, if any."""
    if chatty:
        _banner(rt, args, suite.count, executor.kind, observers)
    plan = None
    if args.resume:
        plan = await rt.plan_resume(
            args.scenarios, force=args.force, retry_errors=args.retry_errors
        )
    total = suite.count * rt.config.epochs - (plan.skipped if plan else 0)
    observers.start(rt, nursery, total)
    try:
        await rt.run_file(args.scenarios, skip=plan, expect=suite)
    except ScenarioFileError as exc:
        # The file changed under the run: what was read finishes and is written.
        return exc
    return None


async def _work_shared(
    rt: Runtime,
    args: argparse.Namespace,
    suite: Any,
    executor: Any,
    observers: Observers,
    nursery: trio.Nursery,
    chatty: bool,
) -> None:
    """A shared run: load its claims (``run --shared``), then claim and run until it is done."""
    if suite is not None:
        added = await rt.load_claims(args.scenarios, suite)
        log.info("run %s: %d claims loaded", rt.run_id, added)
    if chatty:
        print(
            f"arcflow: run {rt.run_id} (shared): worker {rt.worker_id}, executor "
            f"{executor.kind}, database {rt.redacted_dsn}; join it with "
            f"`python -m arcflow work {rt.run_id}`",
            file=sys.stderr,
        )
    observers.start(rt, nursery, None)
    await rt.run_claims()


def _worker_settings(settings: Settings) -> dict[str, Any]:
    values = settings.effective(redact=False)
    return {
        key: values[key]["value"]
        for key in WORKER_KEYS
        if key in values and values[key]["value"] is not None
    }


async def _run_observed(
    args: argparse.Namespace,
    settings: Settings,
    config: Any,
    executor: Any,
    suite: Any,
    observers: Observers,
) -> int:
    state = {"stopping": False, "hard": False}
    shared = bool(getattr(args, "shared", False)) or args.command == "work"
    rt = Runtime(
        executor,
        settings.db,
        run_id=args.resume or args.run_id,
        suite=str(args.scenarios) if suite is not None else None,
        suite_hash=suite.sha256 if suite is not None else None,
        scenario_count=suite.count if suite is not None else None,
        config=config,
        resume=bool(args.resume),
        selection=suite.selection if suite is not None else None,
        shared=shared,
        worker_settings=_worker_settings(settings) if shared and suite is not None else None,
        **observers.hooks(),
    )
    chatty = not args.quiet and not args.json
    file_error: ScenarioFileError | None = None
    with log_context(run_id=rt.run_id):
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_watch_signals, rt, state)
                async with rt:
                    if shared:
                        await _work_shared(rt, args, suite, executor, observers, nursery, chatty)
                    else:
                        file_error = await _work_file(
                            rt, args, suite, executor, observers, nursery, chatty
                        )
                nursery.cancel_scope.cancel()
        finally:
            observers.finish(rt)
        summary = rt.summary()
        # elapsed_s is the runtime's (first start to last write); wall_s is what the user waited.
        summary["wall_s"] = round(process_uptime(), 3)
        if args.json:
            sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
        elif not args.quiet:
            _print_summary(summary, sys.stdout)
        sys.stdout.flush()
        if observers.metrics is not None and settings.metrics_linger > 0:
            if chatty:
                print(
                    f"arcflow: serving the final metrics at {observers.metrics.url} for "
                    f"{settings.metrics_linger:g}s (Ctrl-C to stop)",
                    file=sys.stderr,
                )
            await _linger(settings.metrics_linger)
    if summary["lost_outcomes"]:
        print(
            f"arcflow: {summary['lost_outcomes']} outcomes could be neither written nor kept in "
            f"{rt.journal_path} (see the log above); the run is marked failed. Run again with "
            f"--resume {rt.run_id} to re-run their scenarios",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary["in_journal_batches"]:
        print(
            f"arcflow: some outcomes could not be written and are kept in {rt.journal_path}; "
            f"run again with --resume {rt.run_id} to write them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    if state["hard"]:
        return EXIT_INTERRUPTED
    if file_error is not None:
        print(f"arcflow: error: {file_error}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "fail_under", None) is not None:  # all written: the gate reads the run back
        from .report.gate import gate_run

        return await gate_run(
            settings.db,
            settings.data_dir,
            rt.run_id,
            args.fail_under,
            err=sys.stderr,
            quiet=args.quiet,
        )
    return EXIT_OK


def _banner(
    rt: Runtime, args: argparse.Namespace, count: int, kind: str, observers: Observers
) -> None:
    print(
        f"arcflow: run {rt.run_id}: {count} scenarios from {args.scenarios}, "
        f"executor {kind}, database {rt.redacted_dsn}",
        file=sys.stderr,
    )
    if observers.metrics is not None:
        print(f"arcflow: metrics at {observers.metrics.url}", file=sys.stderr)


_USAGE_ERRORS = (
    RunInUse,
    ScenarioFileError,
    ExecutorSpecError,
    ConfigError,
    ResumeError,
    DatabaseUnavailable,
)


def _load(args: argparse.Namespace) -> Settings | None:
    """The settings, with logging configured; None (after printing why) if they are invalid."""
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(
            f"arcflow: error: {redact_text(str(exc), getattr(args, 'db', None))}", file=sys.stderr
        )
        return None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    settings = _load(args)
    if settings is None:
        return EXIT_USAGE
    tune_gc()  # the CLI is the host: thousands of concurrent scenarios need it (arcflow.hosting)
    try:
        return trio.run(_run, args, settings)
    except BaseException as raw:  # noqa: ASYNC103 - trio.run has returned; mapped below
        failure = raw
    return _run_exit_code(failure, settings)


def cmd_work(args: argparse.Namespace) -> int:
    first = _load(args)
    if first is None:
        return EXIT_USAGE
    tune_gc()

    async def main() -> int:
        prior = await read_prior(
            first.db, first.data_dir, resume=args.run_id, only_failed=None, require=True
        )
        if not prior.shared:
            raise ConfigError(
                f"run {args.run_id} is not shared: start a shared run with "
                "`python -m arcflow run FILE --shared`, or resume this one with --resume"
            )
        # The run's recorded executor settings are the defaults; flags, ARCFLOW_* and the
        # config file win over them.
        flags = {k: v for k, v in vars(args).items() if k in OPTIONS}
        settings = load_settings(
            flags, config_file=getattr(args, "config", None), defaults=prior.worker or {}
        )
        executor = settings.make_executor()
        config = attrs.evolve(settings.runtime_config(), epochs=prior.epochs or 1)
        args.resume, args.scenarios, args.shared = None, None, True
        observers = Observers(settings, args)
        if observers.metrics is not None:
            observers.metrics.bind()
        try:
            return await _run_observed(args, settings, config, executor, None, observers)
        finally:
            observers.close()

    try:
        return trio.run(main)
    except BaseException as raw:  # noqa: ASYNC103 - trio.run has returned; mapped below
        failure = raw
    return _run_exit_code(failure, first)


def _run_exit_code(raw: BaseException, settings: Settings) -> int:
    """The exit code for a run that ended with ``raw``; re-raises what is not ours."""
    exc = primary_error(raw)
    dsn = settings.db
    if isinstance(exc, _USAGE_ERRORS):
        print(f"arcflow: error: {redact_text(str(exc), dsn)}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, RestartIntensityExceeded):
        print(
            f"arcflow: run failed: {redact_text(str(exc), dsn)}\n"
            f"arcflow: unwritten outcomes are in the spill journal; "
            "run again with --resume RUN_ID to write them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ArcflowError):
        print(f"arcflow: error: {redact_text(str(exc), dsn)}", file=sys.stderr)
        return EXIT_FAILED
    raise raw


# -- runs, report, config -----------------------------------------------------------------------------


def _read_command(args: argparse.Namespace, work: Callable[[Any, Settings], Any]) -> int:
    """Run a read-only command against the database; usage and database errors exit 2."""
    from .report import open_report_store

    settings = _load(args)
    if settings is None:
        return EXIT_USAGE

    async def main() -> int:
        async with open_report_store(settings.db, settings.data_dir) as store:
            return await work(store, settings) or EXIT_OK  # work may return an exit code (a gate)

    try:
        code: int = trio.run(main)
    except BaseException as raw:  # noqa: ASYNC103 - trio.run has returned; mapped below
        failure: BaseException | None = raw
    else:
        failure = None
    if failure is None:
        return code
    exc = primary_error(failure)
    if isinstance(exc, ConfigError | DatabaseUnavailable):
        print(f"arcflow: error: {redact_text(str(exc), settings.db)}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, ArcflowError):
        print(f"arcflow: error: {redact_text(str(exc), settings.db)}", file=sys.stderr)
        return EXIT_FAILED
    raise failure


def cmd_workers(args: argparse.Namespace) -> int:
    from .fleet import fleet_status, format_fleet

    async def work(store: Any, _settings: Settings) -> None:
        status = await fleet_status(store, args.run_id)
        if args.json:
            print(json.dumps(status.as_dict(), sort_keys=True))
        else:
            _write(sys.stdout, format_fleet(status))

    return _read_command(args, work)


def cmd_runs(args: argparse.Namespace) -> int:
    from .report import format_runs, list_runs

    async def work(store: Any, _settings: Settings) -> None:
        rows = await list_runs(store, limit=args.limit, suite=args.suite, status=args.status)
        _write(sys.stdout, format_runs(rows, args.format))

    return _read_command(args, work)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, format_report, render_html, scenario_rows

    if args.slowest < 0:
        print(
            f"arcflow: error: invalid --slowest={args.slowest}: must be a whole number >= 0",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def work(store: Any, _settings: Settings) -> int | None:
        report = await build_report(store, args.run_id, slowest=args.slowest)
        if args.html is not None:
            try:
                page = render_html(report, await scenario_rows(store, args.run_id))
                await trio.Path(args.html).write_text(page, encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot write the HTML report to {args.html}: {exc.strerror or exc}"
                ) from None
            print(f"arcflow: wrote {args.html}", file=sys.stderr)
        _write(sys.stdout, format_report(report, args.format))
        if args.fail_under is not None:
            from .report.gate import report_gate

            result = report_gate(report.totals, args.run_id, args.fail_under)
            print(f"arcflow: gate: {result.message}", file=sys.stderr)
            return result.exit_code
        return None

    return _read_command(args, work)


def cmd_config(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(
            f"arcflow: error: {redact_text(str(exc), getattr(args, 'db', None))}", file=sys.stderr
        )
        return EXIT_USAGE
    if args.format == "json":
        body = {
            "file": str(settings.file) if settings.file else None,
            "options": settings.effective(),
            "ignored_environment": list(settings.ignored_env),
        }
        _write(sys.stdout, json.dumps(body, indent=2) + "\n")
    else:
        _write(sys.stdout, format_settings(settings))
    return EXIT_OK


# -- modal ------------------------------------------------------------------------------------------


def _add_modal_command(sub: Any) -> None:
    modal = sub.add_parser(
        "modal",
        help="Modal sandboxes: sweep a run's leftovers",
        description="Commands about the sandboxes of the modal: executor.",
    )
    actions = modal.add_subparsers(dest="modal_command", metavar="ACTION", parser_class=_Parser)
    sweep = actions.add_parser(
        "sweep",
        help="terminate the sandboxes of RUN_ID still running (from a process that died)",
        description="Terminate every running sandbox of the app tagged arcflow-run=RUN_ID "
        "(--resume RUN_ID does this before it starts).",
    )
    sweep.add_argument("run_id", metavar="RUN_ID", help="the run whose sandboxes to terminate")
    sweep.add_argument("--dry-run", action="store_true", help="list them, terminate nothing")
    _add_settings(sweep, ["modal_app", "log_level", "log_format"])
    sweep.set_defaults(func=cmd_modal_sweep)
    modal.set_defaults(func=lambda _args: (modal.print_help(), EXIT_USAGE)[1])


def cmd_modal_sweep(args: argparse.Namespace) -> int:
    from .executors.modal.sweep import sweep_command

    settings = _load(args)
    if settings is None:
        return EXIT_USAGE
    try:
        return sweep_command(
            args.run_id, settings.modal_config(), dry_run=args.dry_run, out=sys.stdout
        )
    except BaseException as raw:  # noqa: ASYNC103 - trio.run has returned; mapped below
        failure = raw
    exc = primary_error(failure)
    if isinstance(exc, ConfigError):
        print(f"arcflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, Exception):
        print(f"arcflow: modal sweep failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    raise failure


# -- diff, export, view (the logic is in arcflow.report) ------------------------------------------------


def _add_fail_under(parser: argparse.ArgumentParser) -> None:
    from .report.gate import EXIT_GATE, parse_rate

    parser.add_argument(
        "--fail-under",
        type=parse_rate,
        metavar="RATE",
        help=f"exit {EXIT_GATE} if the pass rate (latest final attempt of each scenario) is below "
        "RATE, a fraction (0.9) or a percentage (90%%); checked once everything is written",
    )


def _add_report_commands(sub: Any) -> None:
    from .report.gate import EXIT_GATE, parse_regression_limit
    from .report.options import DEFAULT_PORT, EXPORT_FORMATS

    diff = sub.add_parser(
        "diff",
        help="compare two runs scenario by scenario",
        description="Compare RUN_B with RUN_A, scenario by scenario (latest final attempt of "
        "each): regressed (passed, then not), fixed, new, missing, unchanged; score changes; "
        "both pass rates, their difference and an exact McNemar test on the discordant pairs; "
        "by tag.",
    )
    diff.add_argument("run_a", metavar="RUN_A", help="the run before (the baseline)")
    diff.add_argument("run_b", metavar="RUN_B", help="the run after")
    diff.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default table; csv: one line per scenario, its key, change, "
        "both statuses and scores, ...)",
    )
    diff.add_argument(
        "--all", action="store_true", help="list unchanged scenarios too (default: changes only)"
    )
    diff.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML page"
    )
    diff.add_argument(
        "--fail-on-regression",
        nargs="?",
        const="0",
        type=parse_regression_limit,
        metavar="LIMIT",
        help=f"exit {EXIT_GATE} if any scenario regressed, or more than LIMIT: a count (5) or a "
        "fraction of the scenarios in both runs (0.02 or 2%%)",
    )
    _add_settings(diff, READ_KEYS)
    diff.set_defaults(func=cmd_diff)

    export = sub.add_parser(
        "export",
        help="stream a run's outcomes as JSONL, CSV, JUnit XML or Parquet",
        description="Write every outcome of RUN (every attempt; --latest: the latest final "
        "attempt of each scenario) as it is read, in flat memory. junit: one test case per "
        "scenario. parquet needs pyarrow (pip install 'arcflow[parquet]').",
    )
    export.add_argument("run_id", metavar="RUN_ID", help="the run (see `python -m arcflow runs`)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", help="default jsonl")
    export.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write to FILE (default standard output)"
    )
    export.add_argument(
        "--latest", action="store_true", help="only each scenario's latest final attempt"
    )
    _add_settings(export, READ_KEYS)
    export.set_defaults(func=cmd_export)

    view = sub.add_parser(
        "view",
        help="browse the runs, reports, outcomes and diffs in a web browser (127.0.0.1)",
        description="Serve the reports of the database on http://127.0.0.1:PORT/ until Ctrl-C: "
        "the runs, each run's report and scenario table, each outcome, and diffs of two runs.",
    )
    view.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free port)",
    )
    _add_settings(view, READ_KEYS)
    view.set_defaults(func=cmd_view)


def cmd_diff(args: argparse.Namespace) -> int:
    from .report.diff import build_diff, format_diff
    from .report.gate import regression_gate
    from .report.html import render_diff_html

    async def work(store: Any, _settings: Settings) -> int | None:
        diff = await build_diff(store, args.run_a, args.run_b, all=args.all)
        if args.html is not None:
            try:
                await trio.Path(args.html).write_text(render_diff_html(diff), encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"cannot write the HTML diff to {args.html}: {exc.strerror or exc}"
                ) from None
            print(f"arcflow: wrote {args.html}", file=sys.stderr)
        _write(sys.stdout, format_diff(diff, args.format))
        if args.fail_on_regression is None:
            return None
        result = regression_gate(diff, args.fail_on_regression)
        print(f"arcflow: gate: {result.message}", file=sys.stderr)
        return result.exit_code

    return _read_command(args, work)


def cmd_export(args: argparse.Namespace) -> int:
    from .report.export import export_run

    async def work(store: Any, _settings: Settings) -> None:
        result = await export_run(
            store, args.run_id, args.format, args.output, latest=args.latest, stdout=sys.stdout
        )
        if result.path is not None:
            print(f"arcflow: wrote {result.rows:,} outcomes to {result.path}", file=sys.stderr)

    return _read_command(args, work)


def cmd_view(args: argparse.Namespace) -> int:
    from .report.view import view_command

    async def work(store: Any, _settings: Settings) -> None:
        await view_command(store, port=args.port, err=sys.stderr)

    return _read_command(args, work)


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
