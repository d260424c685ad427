"""Import trio-asyncio without changing how the host program's asyncio creates loops.

Importing ``trio_asyncio`` replaces ``asyncio.new_event_loop`` (and
``asyncio.events.new_event_loop``): outside trio, new loops become
trio-asyncio's ``SyncTrioEventLoop``.  From then on ``asyncio.run()`` runs the
host's program on a trio run in disguise, which is not the loop it asked for
(and, for example, refuses a trio guest run).  :func:`import_trio_asyncio`
imports trio-asyncio once and puts the original ``new_event_loop`` back.

What trio-asyncio keeps patched (``get_running_loop``, ``get_event_loop_policy``,
``current_task``, ...) answers exactly as before in any thread that is not
running trio, so the host's asyncio code sees no difference.  If the program
imported ``trio_asyncio`` itself before arcflow did, nothing is undone: it
chose trio-asyncio's behaviour.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from types import ModuleType

__all__ = ["import_trio_asyncio"]

_lock = threading.Lock()


def import_trio_asyncio() -> ModuleType:
    """``import trio_asyncio``, keeping ``asyncio.new_event_loop`` as the host had it."""
    with _lock:
        loaded: ModuleType | None = sys.modules.get("trio_asyncio")
        if loaded is not None:
            return loaded
        top_level = asyncio.new_event_loop
        in_events = asyncio.events.new_event_loop
        module = importlib.import_module("trio_asyncio")
        asyncio.new_event_loop = top_level
        asyncio.events.new_event_loop = in_events
        return module
