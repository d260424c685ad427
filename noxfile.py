"""nox sessions: tests, lint, bench."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite against a real PostgreSQL (started by the tests themselves)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (with the async rules), flake8-async and mypy."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "arcflow", "tests", "benchmarks", "examples")
    session.run("flake8", "--select=ASYNC", "arcflow")
    session.run("mypy", "arcflow")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput, latency and memory benchmarks against baselines (``-- --quick`` for a smoke run)."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
