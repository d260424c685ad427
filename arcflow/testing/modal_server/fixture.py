"""pytest fixtures for a :class:`LocalModal` per test.

Use it as a plugin (``pytest_plugins = ["arcflow.testing.modal_server.fixture"]``
in ``conftest.py``) to get the ``local_modal`` fixture, or build one with other
settings::

    from arcflow.testing.modal_server.fixture import make_fixture

    throttled_modal = make_fixture(creation_rate=5, max_running=20)

The fixture starts the server, points the SDK at it (``MODAL_*`` variables,
restored afterwards, and the SDK's cached client dropped), yields the
:class:`LocalModal` and, on teardown, fails the test if a sandbox is still
running (or a sandbox's exec, or a function call) ``idle_timeout`` seconds after it
(pass ``idle_timeout=None`` to skip).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .server import LocalModal

__all__ = ["local_modal", "make_fixture"]


def make_fixture(
    *, scope: str = "function", idle_timeout: float | None = 10.0, **settings: Any
) -> Callable[..., Any]:
    """A pytest fixture yielding a started :class:`LocalModal` with ``settings``."""

    def fixture() -> Iterator[LocalModal]:
        with LocalModal(**settings) as env, env.environ():
            yield env
            if idle_timeout is not None and not env.wait_idle(idle_timeout):
                pytest.fail(f"left running after the test: {env.left_running()}")

    decorated: Callable[..., Any] = pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]
    return decorated


#: A LocalModal with default settings for each test.
local_modal = make_fixture()
