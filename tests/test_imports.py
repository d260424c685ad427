"""Importing any arcflow module leaves the host program's asyncio as it was, and no module is circular."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import arcflow

ROOT = Path(__file__).resolve().parent.parent

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(arcflow.__path__, prefix="arcflow.")
    if not info.name.endswith("__main__")
)

CHECK = """
import asyncio, importlib, sys
before = (asyncio.new_event_loop, asyncio.events.new_event_loop, type(asyncio.get_event_loop_policy()))
importlib.import_module(sys.argv[1])
after = (asyncio.new_event_loop, asyncio.events.new_event_loop, type(asyncio.get_event_loop_policy()))
assert before == after, (before, after)
print("trio_asyncio" in sys.modules)
"""


def test_every_module_is_listed() -> None:
    """The walk finds the package's modules, nested packages included."""
    assert {"arcflow.runtime", "arcflow.executors.modal.sdk", "arcflow.report"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_module_leaves_asyncio_alone(module: str) -> None:
    """`import arcflow.X` (alone, in a fresh interpreter) keeps new_event_loop and the policy, and imports no trio_asyncio."""
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", f"{module} imports trio_asyncio at import time"
