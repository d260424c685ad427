"""``python -m arcflow``: the command line.

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
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import trio

from ._version import __version__
from .config import BreakerConfig, RetryPolicy, RuntimeConfig
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    ExecutorSpecError,
    RestartIntensityExceeded,
    ResumeError,
    ScenarioFileError,
)
from .executors.base import parse_executor
from .models import RETRYABLE_STATUSES, Scenario, Status
from .runtime import Runtime
from .scenarios import iter_file, validate_file
from .store.dsn import redact_text

log = logging.getLogger("arcflow.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with the usual message
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"arcflow: error: {message}\n")


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
    run.add_argument(
        "--executor",
        required=True,
        help="python:MODULE:FUNCTION, process:'COMMAND ARGS' or modal:'COMMAND ARGS'",
    )
    run.add_argument(
        "--db",
        help="PostgreSQL DSN (default: $ARCFLOW_DB, then PG* variables, then the embedded server)",
    )
    run.add_argument("--data-dir", type=Path, default=Path(".arcflow"), help="embedded database and journals (default .arcflow)")
    run.add_argument("--concurrency", type=int, default=8, help="scenarios running at once (default 8)")
    run.add_argument("--batch-size", type=int, default=100, help="outcomes per batch, 1..100000 (default 100)")
    run.add_argument("--flush-interval", type=float, default=30.0, help="seconds a batch may wait (default 30)")
    run.add_argument("--timeout", type=float, default=None, help="per-scenario timeout in seconds (default none)")
    run.add_argument("--attempts", type=int, default=1, help="attempts for error/timeout outcomes (default 1)")
    run.add_argument("--grace", type=float, default=30.0, help="seconds running scenarios get after Ctrl-C (default 30)")
    run.add_argument("--run-id", help="id of this run (default: a new one)")
    run.add_argument("--resume", metavar="RUN_ID", help="continue RUN_ID: replay its journal, skip finished scenarios")
    run.add_argument("--force", action="store_true", help="with --resume: accept scenarios whose content changed")
    run.add_argument("--retry-errors", action="store_true", help="with --resume: also re-run error and timeout outcomes")
    run.add_argument("--max-retries", type=int, default=3, help="retries of a failed batch write (default 3)")
    run.add_argument("--breaker-threshold", type=int, default=5, help="failures that open the breaker (default 5)")
    run.add_argument("--breaker-cooldown", type=float, default=5.0, help="seconds before a probe (default 5)")
    run.add_argument("--journal-max-bytes", type=int, default=1 << 30, help="spill journal cap (default 1 GiB)")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object, nothing else on stdout")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors")
    run.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    run.set_defaults(func=cmd_run)
    return parser


def _config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    try:
        return RuntimeConfig(
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            flush_interval=args.flush_interval,
            timeout=args.timeout,
            attempts=args.attempts,
            grace=args.grace,
            data_dir=args.data_dir,
            journal_max_bytes=args.journal_max_bytes,
            retry=RetryPolicy(max_retries=args.max_retries),
            breaker=BreakerConfig(
                failure_threshold=args.breaker_threshold, cooldown=args.breaker_cooldown
            ),
        )
    except ConfigError as exc:
        # Field names are the option names with dashes.
        raise ConfigError(str(exc).replace("_", "-").replace("invalid ", "invalid --", 1)) from None


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
        f"  throughput    {summary['throughput_per_s']:.1f} rows/s over {summary['elapsed_s']:.2f}s",
    ]
    if summary["spilled_outcomes"] or summary["in_journal_batches"]:
        lines.append(
            f"  journal       {summary['spilled_outcomes']} spilled, {summary['replayed_outcomes']} replayed, "
            f"{summary['in_journal_batches']} batches still there"
        )
    if summary["retries"] or summary["breaker_transitions"]:
        lines.append(f"  retries       {summary['retries']}; breaker {summary['breaker_transitions'] or 'never opened'}")
    if summary["restarts"]:
        lines.append(f"  restarts      {summary['restarts']}")
    out.write("\n".join(lines) + "\n")


async def _plan_resume(
    rt: Runtime, path: Path, *, force: bool, retry_errors: bool
) -> Callable[[Scenario], bool]:
    """What a resumed run skips, and at which attempt the others start."""
    assert rt.store is not None
    latest = await rt.store.latest_attempts(rt.run_id)

    def check() -> tuple[set[str], list[str]]:
        skip: set[str] = set()
        changed: list[str] = []
        for lineno, scenario in iter_file(path):
            prior = latest.get(scenario.id)
            if prior is None:
                continue
            attempt, status, final, digest = prior
            if digest is not None and digest != scenario.content_hash:
                changed.append(f"{path}:{lineno}: scenario {scenario.id!r}")
                if not force:
                    continue
            rt.control.first_attempt[scenario.id] = attempt + 1
            done = final and status != Status.CANCELLED.value
            if done and not (retry_errors and Status(status) in RETRYABLE_STATUSES):
                skip.add(scenario.id)
        return skip, changed

    skip, changed = await trio.to_thread.run_sync(check)
    if changed and not force:
        shown = "\n  ".join(changed[:10])
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise ResumeError(
            f"{len(changed)} scenario(s) changed since run {rt.run_id} first ran them:\n  {shown}{more}\n"
            "Restore the original file, start a new run, or pass --force to re-run them as they are now."
        )
    log.info("resume %s: %d scenarios already done, skipped", rt.run_id, len(skip))
    return lambda s: s.id in skip


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
                print(f"arcflow: {signal.Signals(signum).name} again: cancelling running scenarios", file=sys.stderr)
                rt.cancel_running()


async def _run(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    executor = parse_executor(args.executor)
    suite = validate_file(args.scenarios)
    if args.resume and args.run_id and args.resume != args.run_id:
        raise ConfigError("--resume RUN_ID and --run-id disagree; give one of them")
    if (args.force or args.retry_errors) and not args.resume:
        raise ConfigError("--force and --retry-errors only make sense with --resume RUN_ID")
    run_id = args.resume or args.run_id
    state = {"stopping": False, "hard": False}
    rt = Runtime(
        executor,
        args.db,
        run_id=run_id,
        suite=str(args.scenarios),
        suite_hash=suite.sha256,
        scenario_count=suite.count,
        config=config,
        resume=bool(args.resume),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, rt, state)
        async with rt:
            if not args.quiet and not args.json:
                print(
                    f"arcflow: run {rt.run_id}: {suite.count} scenarios from {args.scenarios}, "
                    f"executor {executor.kind}, database {rt.redacted_dsn}",
                    file=sys.stderr,
                )
            skip = None
            if args.resume:
                skip = await _plan_resume(
                    rt, args.scenarios, force=args.force, retry_errors=args.retry_errors
                )
            await rt.run_file(args.scenarios, skip=skip)
        nursery.cancel_scope.cancel()
    summary = rt.summary()
    if args.json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    elif not args.quiet:
        _print_summary(summary, sys.stdout)
    if summary["in_journal_batches"] or summary["rescued_outcomes"]:
        print(
            f"arcflow: some outcomes could not be written and are kept in {rt.journal.path}; "
            f"run again with --resume {rt.run_id} to write them",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    if state["hard"]:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            if isinstance(sub, ArcflowError):
                return sub
    return exc


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return trio.run(_run, args)
    except BaseException as raw:
        exc = _unwrap(raw)
        dsn = getattr(args, "db", None)
        if isinstance(exc, ScenarioFileError | ExecutorSpecError | ConfigError | ResumeError | DatabaseUnavailable):
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
        raise


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
