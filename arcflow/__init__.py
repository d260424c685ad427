"""arcflow: run many scenarios concurrently and record every outcome in PostgreSQL, in batches.

The public surface::

    open_runtime, Runtime                 trio hosts (async with arcflow.open_runtime(...) as rt)
    AsyncioRuntime, HostExecutor          asyncio hosts (async with arcflow.aio.open_runtime(...) as rt)
    RuntimeConfig, RetryPolicy, BreakerConfig, SupervisorConfig, load_settings, Settings
    Scenario, Outcome, Status, Batch, FlushReason, ExecutionResult, RuntimeStatistics, ResumePlan
    Executor, ExecutionContext, PythonExecutor
    tune_gc                               for hosts with thousands of concurrent scenarios
    ArcflowError and its subclasses (see arcflow.errors)

Importing arcflow does not patch asyncio; the runtime opens trio-asyncio itself.
The pieces inside (the actors, the journal, the breaker, the store) are in
modules named for them; see docs/architecture.md.  Test helpers for your own
suites are in :mod:`arcflow.testing` and the pytest plugin
:mod:`arcflow.pytest_plugin`.
"""

from ._version import __version__
from .aio import AsyncioRuntime
from .config import BreakerConfig, RetryPolicy, RuntimeConfig, SupervisorConfig
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    DataWriteError,
    ExecutorSpecError,
    PipelineFull,
    RestartIntensityExceeded,
    ResumeError,
    RuntimeClosed,
    ScenarioFileError,
    TransientWriteError,
    WriteError,
)
from .executors import ExecutionContext, Executor, PythonExecutor
from .executors.host import HostExecutor
from .hosting import tune_gc
from .models import Batch, ExecutionResult, FlushReason, Outcome, Scenario, Status
from .runs import ResumePlan
from .runtime import Runtime, new_run_id, open_runtime
from .settings import Settings, load_settings
from .stats import RuntimeStatistics

__all__ = [
    "ArcflowError",
    "AsyncioRuntime",
    "Batch",
    "BreakerConfig",
    "ConfigError",
    "DataWriteError",
    "DatabaseUnavailable",
    "ExecutionContext",
    "ExecutionResult",
    "Executor",
    "ExecutorSpecError",
    "FlushReason",
    "HostExecutor",
    "Outcome",
    "PipelineFull",
    "PythonExecutor",
    "RestartIntensityExceeded",
    "ResumeError",
    "ResumePlan",
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "RuntimeConfig",
    "RuntimeStatistics",
    "Scenario",
    "ScenarioFileError",
    "Settings",
    "Status",
    "SupervisorConfig",
    "TransientWriteError",
    "WriteError",
    "__version__",
    "load_settings",
    "new_run_id",
    "open_runtime",
    "tune_gc",
]
