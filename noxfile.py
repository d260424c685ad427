"""nox sessions: tests, lint, bench."""

from __future__ import annotations

import glob

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


#: Functions taking ``task_status`` that are meant for ``nursery.start``: listed so flake8-async's
#: ASYNC113 checks their callers (and ASYNC114 stops asking for them).
STARTABLE = [
    "run_batcher",
    "serve",
    "run",
    "_watch_signals",
    "run_heartbeat",
    "_heartbeat",
]


#: The Python versions arcflow supports; a session whose interpreter is missing here is skipped.
PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite against a real PostgreSQL (started by the tests themselves), per Python."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (the async rules and the formatter), flake8-async and mypy."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "arcflow", "tests", "benchmarks", "examples", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "arcflow", "tests", "benchmarks", "examples", "noxfile.py"
    )
    # The standalone flake8-async takes files, not a directory.
    # The local Modal control plane is asyncio code in a thread of its own (a grpclib server),
    # not trio: flake8-async's trio rules do not apply to it (ruff's ASYNC rules still do).
    sources = sorted(
        path for path in glob.glob("arcflow/**/*.py", recursive=True) if "modal_server" not in path
    )
    session.run("flake8-async", f"--startable-in-context-manager={','.join(STARTABLE)}", *sources)
    session.run("mypy", "arcflow")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput, latency and memory benchmarks against baselines (``-- --quick`` for a smoke run)."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
