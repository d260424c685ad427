"""``python -m arcflow modal sweep RUN_ID``: terminate the sandboxes a run left running.

Every sandbox arcflow creates is tagged ``arcflow-run=RUN_ID``.  A process that died
(killed, crashed, the machine lost) cannot terminate its sandboxes; they would run
until their lifetime.  ``--resume RUN_ID`` sweeps them before it starts; this command
does it without resuming.
"""

from __future__ import annotations

from typing import TextIO

import trio

from .config import ModalConfig
from .lifecycle import TAG_RUN
from .sdk import ModalBackend

__all__ = ["sweep_command", "sweep_run"]


async def sweep_run(
    run_id: str, config: ModalConfig | None = None, *, dry_run: bool = False
) -> tuple[list[str], list[str]]:
    """Terminate the running sandboxes of ``run_id`` in the app: (found, terminated) ids."""
    backend = ModalBackend(config or ModalConfig(), client_tag="sweep")
    return await backend.sweep({TAG_RUN: run_id}, dry_run=dry_run)


def sweep_command(run_id: str, config: ModalConfig, *, dry_run: bool, out: TextIO) -> int:
    """The command: sweep, print what was found and terminated; the exit code (1 if some are left)."""
    found, terminated = trio.run(lambda: sweep_run(run_id, config, dry_run=dry_run))
    app = config.app_name
    if not found:
        out.write(f"no sandbox of run {run_id} is running in app {app!r}\n")
        return 0
    if dry_run:
        out.write(f"{len(found)} sandbox(es) of run {run_id} running in app {app!r}:\n")
        out.writelines(f"  {sandbox_id}\n" for sandbox_id in found)
        return 0
    out.write(f"terminated {len(terminated)} of {len(found)} sandbox(es) of run {run_id}:\n")
    out.writelines(
        f"  {sandbox_id}{'' if sandbox_id in terminated else '  (not terminated)'}\n"
        for sandbox_id in found
    )
    return 0 if len(terminated) == len(found) else 1
