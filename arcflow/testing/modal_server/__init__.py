"""A local stand-in for Modal's control plane, for testing code that uses the real ``modal`` SDK.

Import it explicitly (it needs the ``modal`` extra: grpclib and modal_proto)::

    from arcflow.testing.modal_server import LocalModal

    with LocalModal(creation_rate=30) as modal_env, modal_env.environ():
        app = modal.App.lookup("demo", create_if_missing=True)
        sb = modal.Sandbox.create("python", "-c", "print('hi')", app=app)
        assert sb.stdout.read() == "hi\\n"
        sb.wait()
    assert modal_env.statistics().creates == 1

See docs/modal_server.md for what is served and what is not.
"""

from __future__ import annotations

from grpclib import Status

from .backend import LiveSandbox, Settings, Statistics
from .server import LocalModal

__all__ = ["LiveSandbox", "LocalModal", "Settings", "Statistics", "Status"]
