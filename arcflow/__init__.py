"""arcflow: run many scenarios concurrently and record every outcome in PostgreSQL, in batches.

The public surface::

    Runtime, open_runtime (trio hosts), RuntimeConfig, RetryPolicy, BreakerConfig, SupervisorConfig
    AsyncioRuntime, HostExecutor (asyncio hosts; see arcflow.aio and its open_runtime)
    Scenario, Outcome, Status, FlushReason, Batch, ExecutionResult
    Executor, ExecutionContext, PythonExecutor, parse_executor
    RuntimeStatistics, CircuitBreaker, SpillJournal
    ArcflowError and its subclasses (see arcflow.errors)

Importing arcflow does not patch asyncio; the runtime opens trio-asyncio itself.
Test helpers for your own suites are in :mod:`arcflow.testing` and the pytest
plugin :mod:`arcflow.pytest_plugin`.
"""

from . import aio
from ._version import __version__
from .aio import AsyncioRuntime
from .breaker import BreakerState, CircuitBreaker
from .config import BreakerConfig, RetryPolicy, RuntimeConfig, SupervisorConfig
from .embed import open_runtime
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
from .executors import ExecutionContext, Executor, PythonExecutor, parse_executor
from .executors.host import HostExecutor
from .journal import SpillJournal
from .models import Batch, ExecutionResult, FlushReason, Outcome, Scenario, Status
from .runtime import Runtime, new_run_id
from .settings import Settings, load_settings
from .stats import RuntimeStatistics

__all__ = [
    "ArcflowError",
    "AsyncioRuntime",
    "Batch",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
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
    "RetryPolicy",
    "Runtime",
    "RuntimeClosed",
    "RuntimeConfig",
    "RuntimeStatistics",
    "Scenario",
    "ScenarioFileError",
    "Settings",
    "SpillJournal",
    "Status",
    "SupervisorConfig",
    "TransientWriteError",
    "WriteError",
    "__version__",
    "aio",
    "load_settings",
    "new_run_id",
    "open_runtime",
    "parse_executor",
]
