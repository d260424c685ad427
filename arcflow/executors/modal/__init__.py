"""``modal:COMMAND ARGS``: one Modal Sandbox per scenario.

* :mod:`.executor`: :class:`ModalExecutor`: creation rate, retries, the outcome mapping;
* :mod:`.config`: :class:`ModalConfig`;
* :mod:`.rate`: :class:`CreationRate`, the adaptive (AIMD) creation rate;
* :mod:`.pool`: :class:`SandboxPool`, the warm pool (``ModalConfig.pool``): long-lived
  sandboxes lent to one scenario at a time, recycled;
* :mod:`.credentials`: the token lookup checked at start;
* :mod:`.sandboxes`: the runner protocol the executor drives, the report, the refusals;
* :mod:`.sdk`: the real backend (:class:`ModalBackend`), Modal's ``.aio`` API from trio;
* :mod:`.bridge`: one crossing from trio to the SDK's event loop per call;
* :mod:`.lifecycle`: what runs on that loop: a sandbox's life, background terminations,
  sweeps by tags;
* :mod:`.sweep`: ``python -m arcflow modal sweep RUN_ID``.

Importing this package imports neither ``modal`` nor ``trio_asyncio``.
"""

from .config import ModalConfig
from .credentials import MISSING_CREDENTIALS_HELP, find_modal_credentials
from .executor import DEFAULT_SANDBOX_TIMEOUT_S, SANDBOX_TIMEOUT_MARGIN_S, ModalExecutor
from .pool import SandboxPool
from .rate import CreationRate
from .sandboxes import (
    CreatedSandbox,
    SandboxCreationThrottled,
    SandboxCreationUnavailable,
    SandboxReport,
    SandboxRequest,
    SandboxRunner,
)
from .sdk import ModalBackend

__all__ = [
    "DEFAULT_SANDBOX_TIMEOUT_S",
    "MISSING_CREDENTIALS_HELP",
    "SANDBOX_TIMEOUT_MARGIN_S",
    "CreatedSandbox",
    "CreationRate",
    "ModalBackend",
    "ModalConfig",
    "ModalExecutor",
    "SandboxCreationThrottled",
    "SandboxCreationUnavailable",
    "SandboxPool",
    "SandboxReport",
    "SandboxRequest",
    "SandboxRunner",
    "find_modal_credentials",
]
