"""The run layer: a run's row in PostgreSQL from start to end, and what a resumed run skips.

A run is recorded in ``arcflow.runs`` when it starts (``running``) and when
it ends (``finished``, ``stopped``, ``failed`` or ``incomplete``).  Resuming
it (:func:`plan_resume`) reads every scenario's latest stored attempt:
scenarios with a final outcome are skipped, the others continue at the next
attempt number, and a scenario whose content changed since is refused unless
forced.  The database itself is opened by :func:`arcflow.store.open_store`,
which reports use too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from .errors import ArcflowError, ResumeError
from .models import RETRYABLE_STATUSES, Scenario, Status
from .scenarios import iter_file
from .store import Store

log = logging.getLogger("arcflow.runs")

__all__ = ["ResumePlan", "RunRecord", "plan_resume", "run_status"]


@attrs.frozen
class ResumePlan:
    """What a resumed run skips, and the attempt number the others start at.

    Call it with a scenario to ask whether it is skipped (it is the ``skip``
    of :meth:`arcflow.Runtime.run_file`).
    """

    #: Ids of scenarios that already have a final outcome.
    skip: frozenset[str]
    #: Next attempt number per scenario id that has stored attempts.
    first_attempts: Mapping[str, int]

    @property
    def skipped(self) -> int:
        """How many scenarios are skipped."""
        return len(self.skip)

    def __call__(self, scenario: Scenario) -> bool:
        return scenario.id in self.skip


async def plan_resume(
    store: Store, run_id: str, path: Path | str, *, force: bool = False, retry_errors: bool = False
) -> ResumePlan:
    """Plan the resume of ``run_id`` over the scenario file ``path``.

    Raises :class:`ResumeError` listing (file:line) the scenarios whose
    content changed since the run first ran them, unless ``force``: then they
    run again as they are now.  With ``retry_errors``, ``error`` and
    ``timeout`` outcomes run again too.
    """
    path = Path(path)
    latest = await store.latest_attempts(run_id)

    def check() -> tuple[set[str], dict[str, int], list[str]]:
        skip: set[str] = set()
        first_attempts: dict[str, int] = {}
        changed: list[str] = []
        for lineno, scenario in iter_file(path):
            prior = latest.get(scenario.id)
            if prior is None:
                continue
            attempt, status, final, digest = prior
            first_attempts[scenario.id] = attempt + 1
            if digest is not None and digest != scenario.content_hash:
                # With --force a changed scenario runs again as it is now: its stored
                # outcome describes the old content.
                changed.append(f"{path}:{lineno}: scenario {scenario.id!r}")
                continue
            done = final and status != Status.CANCELLED.value
            if done and not (retry_errors and Status(status) in RETRYABLE_STATUSES):
                skip.add(scenario.id)
        return skip, first_attempts, changed

    skip, first_attempts, changed = await trio.to_thread.run_sync(check)
    if changed and not force:
        shown = "\n  ".join(changed[:10])
        more = f"\n  ... and {len(changed) - 10} more" if len(changed) > 10 else ""
        raise ResumeError(
            f"{len(changed)} scenario(s) changed since run {run_id} first ran them:\n"
            f"  {shown}{more}\n"
            "Restore the original file, start a new run, or pass --force to re-run them as they are now."
        )
    log.info("resume %s: %d scenarios already done, skipped", run_id, len(skip))
    return ResumePlan(skip=frozenset(skip), first_attempts=first_attempts)


def run_status(*, in_journal: int, failed: bool, stopped: bool) -> str:
    """How a run ended: ``incomplete`` while anything is still in its journal, then
    ``failed``, ``stopped`` (a stop request) or ``finished``."""
    if in_journal:
        return "incomplete"
    if failed:
        return "failed"
    if stopped:
        return "stopped"
    return "finished"


@attrs.define
class RunRecord:
    """One run's row in ``arcflow.runs``, written through ``store``."""

    store: Store
    run_id: str
    suite: str | None = None
    suite_hash: str | None = None
    scenario_count: int | None = None

    async def start(
        self, *, executor: Mapping[str, Any], config: Mapping[str, Any], resume: bool
    ) -> None:
        """Mark the run ``running``; a resume of a run the database does not know is refused."""
        if resume and await self.store.get_run(self.run_id) is None:
            raise ResumeError(
                f"cannot resume run {self.run_id!r}: no such run in {self.store.redacted_dsn} "
                "(check the id, and --db / --data-dir)"
            )
        await self.store.start_run(
            self.run_id,
            suite=self.suite,
            suite_hash=self.suite_hash,
            executor=executor,
            config=config,
            scenarios=self.scenario_count,
        )

    async def finish(self, *, status: str, summary: Mapping[str, Any]) -> None:
        """Record how the run ended; a database that cannot take it now is logged, not raised."""
        try:
            await self.store.finish_run(self.run_id, status=status, summary=summary)
        except ArcflowError as exc:
            log.warning("run %s: could not record the run's end: %s", self.run_id, exc)
