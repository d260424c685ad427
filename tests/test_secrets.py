"""Secrets and paths through the CLI: children see no database settings, files are private."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import trio
from conftest import query

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "scripts" / "scenario_proc.py"
SECRET = "s3cret-pw-2b"


def _with_password(dsn: str) -> str:
    """The test server's DSN with a password in it (the test server trusts; it is ignored)."""
    parts = urlsplit(dsn)
    netloc = parts.netloc.split("@")[-1]
    user = (parts.username or "postgres") + ":" + SECRET
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))


async def test_process_children_get_only_what_the_flags_name(
    dsn: str, run_id: str, tmp_path: Path
) -> None:
    """run --executor process: with ARCFLOW_DB holding a password: the children see neither it nor
    PGPASSWORD; --pass-env NAME and --env NAME=VALUE reach them; nothing printed holds the password."""
    suite = tmp_path / "env.jsonl"
    names = ["ARCFLOW_DB", "PGPASSWORD", "SOME_TOKEN", "OTHER_TOKEN", "GIVEN"]
    suite.write_text(
        "".join(
            json.dumps({"id": name, "input": {"mode": "env", "name": name}}) + "\n"
            for name in names
        )
    )
    env = {
        **os.environ,
        "ARCFLOW_DB": _with_password(dsn),
        "PGPASSWORD": SECRET,
        "SOME_TOKEN": "token-passed",
        "OTHER_TOKEN": "token-kept",
    }
    argv = [
        sys.executable, "-m", "arcflow", "run", str(suite), "--run-id", run_id,
        "--executor", "process:" + shlex.join([sys.executable, str(SCRIPT)]),
        "--pass-env", "SOME_TOKEN", "--env", "GIVEN=value-given",
        "--data-dir", str(tmp_path / "data"), "--progress", "off", "--log-level", "DEBUG",
    ]  # fmt: skip
    proc = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
        )
    )
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    rows = await query(
        dsn, "SELECT scenario_id, output FROM arcflow.outcomes WHERE run_id = $1", run_id
    )
    seen = {r["scenario_id"]: json.loads(r["output"])["value"] for r in rows}
    assert seen == {
        "ARCFLOW_DB": None,
        "PGPASSWORD": None,
        "SOME_TOKEN": "token-passed",
        "OTHER_TOKEN": None,
        "GIVEN": "value-given",
    }
    # What holds outcome data is private: the journal folder 0700, its files 0600.  (The data
    # folder itself stays traversable: the embedded server runs as its own user under root.)
    journals = tmp_path / "data" / "journal"
    assert stat.S_IMODE(journals.stat().st_mode) == 0o700
    written = list(journals.rglob("*"))
    assert written, "the run wrote nothing in its journal folder"
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
