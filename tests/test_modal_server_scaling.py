"""The local Modal control plane stays as fast after many sandboxes as at the start.

A benchmark makes tens of thousands of sandboxes against one server; an operation that
scans every sandbox ever made (not only the running ones) gets slower with each of them.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from conftest import import_or_skip

modal = import_or_skip("modal")

from arcflow.testing.modal_server import LocalModal  # noqa: E402


class CountingDict(dict[str, Any]):
    """A dict that counts the scans of its values."""

    scans = 0

    def values(self) -> Any:
        CountingDict.scans += 1
        return super().values()


def test_creating_and_listing_do_not_scan_finished_sandboxes() -> None:
    """With 30 sandboxes finished, a creation and a list of running sandboxes look at the
    running ones only, not at every sandbox the server ever made."""

    async def main() -> None:
        app = await modal.App.lookup.aio("scaling", create_if_missing=True)
        for _ in range(30):
            sb = await modal.Sandbox.create.aio(sys.executable, "-c", "pass", app=app)
            await sb.wait.aio()
            await sb.detach.aio()
        backend = env._backend
        assert backend is not None
        counting = CountingDict(backend.sandboxes)
        backend.sandboxes = counting
        CountingDict.scans = 0
        sb = await modal.Sandbox.create.aio("/bin/sh", "-c", "exec sleep 30", app=app)
        found = [s.object_id async for s in modal.Sandbox.list.aio(app_id=app.app_id)]
        assert found == [sb.object_id]
        assert CountingDict.scans == 0
        await sb.terminate.aio()
        await sb.detach.aio()

    with LocalModal() as env, env.environ():
        asyncio.run(main())
        assert env.wait_idle(10)
