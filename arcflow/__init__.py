"""arcflow: run many scenarios concurrently and record every outcome in PostgreSQL, in batches.

The public surface::

    Runtime, RuntimeConfig, RetryPolicy, BreakerConfig, SupervisorConfig
    Scenario, Outcome, Status, FlushReason, Batch, ExecutionResult
    Executor, ExecutionContext, PythonExecutor, parse_executor
    RuntimeStatistics, CircuitBreaker, SpillJournal
    ArcflowError and its subclasses (see arcflow.errors)

Importing arcflow does not patch asyncio; the runtime opens trio-asyncio itself.
"""

from ._version import __version__
from .breaker import BreakerState, CircuitBreaker
from .config import BreakerConfig, RetryPolicy, RuntimeConfig, SupervisorConfig
from .errors import (
    ArcflowError,
    ConfigError,
    DatabaseUnavailable,
    DataWriteError,
    ExecutorSpecError,
    RestartIntensityExceeded,
    ResumeError,
    RuntimeClosed,
    ScenarioFileError,
    ScenarioRejected,
    TransientWriteError,
    WriteError,
)
from .executors import ExecutionContext, Executor, PythonExecutor, parse_executor
from .journal import SpillJournal
from .models import Batch, ExecutionResult, FlushReason, Outcome, Scenario, Status
from .runtime import Runtime, new_run_id
from .stats import RuntimeStatistics

__all__ = [
    "ArcflowError",
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
    "Outcome",
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
    "ScenarioRejected",
    "SpillJournal",
    "Status",
    "SupervisorConfig",
    "TransientWriteError",
    "WriteError",
    "__version__",
    "new_run_id",
    "parse_executor",
]
