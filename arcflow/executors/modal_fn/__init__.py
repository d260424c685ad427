"""``modal-fn:APP/FUNCTION``: a deployed Modal Function called once per scenario.

* :mod:`.executor`: :class:`ModalFnExecutor`: spawn, record the call id, wait, cancel;
  retries of refusals and outages; re-attaching to calls on resume;
* :mod:`.config`: :class:`ModalFnConfig`;
* :mod:`.calls`: the runner protocol the executor drives, the report, the refusals;
* :mod:`.sdk`: the real backend (:class:`FunctionBackend`): from trio to the SDK's own
  event loop, once per step; start-up errors;
* :mod:`.ops`: (asyncio) what runs on that loop: spawn, wait, cancel, the background
  canceller, waits spread over a few connections, the function's stats;
* :mod:`.ledger`: the function-call ids in the run's database (``arcflow.modal_calls``).

Importing this package imports neither ``modal`` nor ``trio_asyncio``.
"""

from .calls import (
    CallRefused,
    CallReport,
    CallRequest,
    CallUnavailable,
    FunctionRunner,
    RemoteFailure,
)
from .config import ModalFnConfig
from .executor import ModalFnExecutor, parse_target
from .ledger import TABLE as CALLS_TABLE
from .ledger import CallLedger

__all__ = [
    "CALLS_TABLE",
    "CallLedger",
    "CallRefused",
    "CallReport",
    "CallRequest",
    "CallUnavailable",
    "FunctionRunner",
    "ModalFnConfig",
    "ModalFnExecutor",
    "RemoteFailure",
    "parse_target",
]
