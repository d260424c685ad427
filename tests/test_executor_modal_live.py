"""The modal: executor against the real Modal service.

Runs only where Modal credentials are configured (``MODAL_TOKEN_ID`` and
``MODAL_TOKEN_SECRET``, or ``~/.modal.toml``): it starts real, billed
sandboxes.  Everywhere else it is skipped with that reason; the rest of the
executor's logic is covered by tests/test_executor_modal.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import arcflow
from arcflow.errors import ConfigError
from arcflow.executors.modal import ModalConfig, ModalExecutor, find_modal_credentials

try:
    CREDENTIALS: str | None = find_modal_credentials()
except ConfigError:
    CREDENTIALS = None

pytestmark = pytest.mark.skipif(
    CREDENTIALS is None,
    reason="no Modal credentials here (set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET)",
)

# Reads the scenario on stdin, echoes its id, passes; sleeps when asked (for the timeout case).
COMMAND = [
    "python",
    "-c",
    "import json,sys,time; s=json.load(sys.stdin); time.sleep(s['input'].get('sleep',0)); "
    "print(json.dumps({'status':'passed','output':{'id':s['id']}}))",
]


async def test_live_sandboxes_record_real_ids(
    dsn: str, run_id: str, db_query: Any, tmp_path: Path
) -> None:
    """Real sandboxes run scenarios; outcomes carry real sandbox ids; a timeout terminates its
    sandbox, and no sandbox of the run is left running."""
    executor = ModalExecutor(
        COMMAND, ModalConfig(app_name="arcflow-tests", max_creations_per_second=2)
    )
    async with arcflow.Runtime(
        executor, dsn, run_id=run_id, concurrency=3, data_dir=tmp_path
    ) as rt:
        for i in range(3):
            await rt.submit(arcflow.Scenario(id=f"live-{i}"))
        await rt.submit(arcflow.Scenario(id="live-slow", input={"sleep": 120}, timeout_s=20))
    rows = await db_query(
        "SELECT scenario_id, status, executor FROM arcflow.outcomes WHERE run_id = $1 ORDER BY 1",
        run_id,
    )
    import json

    by_id = {r["scenario_id"]: (r["status"], json.loads(r["executor"])) for r in rows}
    assert {k: v[0] for k, v in by_id.items()} == {
        "live-0": "passed",
        "live-1": "passed",
        "live-2": "passed",
        "live-slow": "timeout",
    }
    for status, details in by_id.values():
        if status == "passed":
            assert str(details.get("sandbox_id", "")).startswith("sb-")
    assert by_id["live-slow"][1].get("terminated") is True
    # Nothing of the run is left running (the timed-out one was terminated, the others exited).
    from arcflow.executors.modal.sweep import sweep_run

    found, _ = await sweep_run(run_id, ModalConfig(app_name="arcflow-tests"), dry_run=True)
    assert found == []
