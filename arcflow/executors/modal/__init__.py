"""``modal:COMMAND ARGS``: one Modal Sandbox per scenario.

* :mod:`.executor`: :class:`ModalExecutor`, the protections around creation and terminate;
* :mod:`.config`: :class:`ModalConfig`;
* :mod:`.credentials`: the token lookup checked at start;
* :mod:`.sandboxes`: the handle protocol the executor drives, and a backend's signals;
* :mod:`.sdk`: the real backend, Modal's ``.aio`` API under trio-asyncio.

Importing this package imports neither ``modal`` nor ``trio_asyncio``.
"""

from .config import ModalConfig
from .credentials import MISSING_CREDENTIALS_HELP, find_modal_credentials
from .executor import DEFAULT_SANDBOX_TIMEOUT_S, SANDBOX_TIMEOUT_MARGIN_S, ModalExecutor
from .sandboxes import (
    SandboxCreationThrottled,
    SandboxFactory,
    SandboxHandle,
    SandboxLifetimeExceeded,
    SandboxRequest,
)
from .sdk import ModalBackend, ModalSandbox

__all__ = [
    "DEFAULT_SANDBOX_TIMEOUT_S",
    "MISSING_CREDENTIALS_HELP",
    "SANDBOX_TIMEOUT_MARGIN_S",
    "ModalBackend",
    "ModalConfig",
    "ModalExecutor",
    "ModalSandbox",
    "SandboxCreationThrottled",
    "SandboxFactory",
    "SandboxHandle",
    "SandboxLifetimeExceeded",
    "SandboxRequest",
    "find_modal_credentials",
]
