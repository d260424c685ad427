"""Executors: where scenarios run (in process, in a subprocess, in a Modal sandbox)."""

from .base import ExecutionContext, Executor, parse_executor, result_from_mapping
from .python import PythonExecutor

__all__ = [
    "ExecutionContext",
    "Executor",
    "PythonExecutor",
    "parse_executor",
    "result_from_mapping",
]
