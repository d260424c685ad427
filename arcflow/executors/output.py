"""How a command's output becomes a result, for every executor that runs commands.

The ``process:`` executor and the sandbox executors share one contract:
the scenario's JSON on the command's stdin, one JSON value on its stdout
(``null`` or an object with any of ``status``, ``score``, ``output``), logs on
stderr.  :class:`OutputCapture` keeps each stream within a limit while it is
read to the end; :func:`result_from_output` maps how the command ended:

* exit code not 0: ``error``, ``ProcessExitError``, with the stderr tail;
* stdout over its limit: ``error``, ``StdoutTooLarge``;
* stdout empty: ``error``, ``EmptyOutput``;
* stdout not JSON: ``error``, ``InvalidJSON``, with its first 200 characters;
* otherwise :func:`~arcflow.executors.base.result_from_mapping`.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from typing import Any, Literal

import trio

from ..models import ExecutionResult, Status
from .base import result_from_mapping

#: Bytes of stdout kept by default; more is an error (the result must fit).
DEFAULT_STDOUT_LIMIT = 1024 * 1024
#: Bytes of the end of stderr kept by default, for error messages.
DEFAULT_STDERR_LIMIT = 4 * 1024
_READ_CHUNK = 64 * 1024
_PREVIEW_CHARS = 200


class OutputCapture:
    """One output stream, read to the end but kept within ``limit`` bytes.

    ``keep="head"`` keeps the first ``limit`` bytes (stdout: the result);
    ``keep="tail"`` keeps the last ``limit`` bytes (stderr: the error is at
    the end).  Bytes beyond the limit are counted and dropped, and
    ``truncated`` says so, so a chatty child never blocks on a full pipe.
    """

    def __init__(self, limit: int, *, keep: Literal["head", "tail"]) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self.keep = keep
        self.total = 0
        self._data = bytearray()

    @property
    def truncated(self) -> bool:
        """Whether bytes were dropped."""
        return self.total > len(self._data)

    def feed(self, chunk: bytes | bytearray | str) -> None:
        """Account for ``chunk`` and keep what fits (text is counted as UTF-8)."""
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "surrogateescape")
        self.total += len(chunk)
        if self.keep == "head":
            room = self.limit - len(self._data)
            if room > 0:
                self._data += chunk[:room]
        else:
            self._data += chunk
            excess = len(self._data) - self.limit
            if excess > 0:
                del self._data[:excess]

    @property
    def data(self) -> bytes:
        """The bytes kept."""
        return bytes(self._data)

    def text(self) -> str:
        """The bytes kept, decoded as UTF-8 (invalid bytes replaced)."""
        return self._data.decode("utf-8", "replace")

    def describe_tail(self) -> str:
        """The kept text, stripped, marked as a tail when bytes were dropped."""
        text = self.text().strip()
        if self.truncated and self.keep == "tail":
            return f"[... {self.total - len(self._data)} earlier bytes dropped]\n{text}"
        return text


async def read_stream(stream: trio.abc.ReceiveStream, capture: OutputCapture) -> None:
    """Read ``stream`` to EOF into ``capture``."""
    while chunk := await stream.receive_some(_READ_CHUNK):
        capture.feed(chunk)


def describe_exit(exit_code: int) -> str:
    """``exited with code 3`` or ``was killed by signal SIGKILL``."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"was killed by {name}"
    return f"exited with code {exit_code}"


def _with_stderr(message: str, stderr: OutputCapture) -> str:
    tail = stderr.describe_tail()
    return f"{message}; stderr:\n{tail}" if tail else f"{message}; stderr was empty"


def error_result(
    error_type: str, message: str, details: Mapping[str, Any], status: Status = Status.ERROR
) -> ExecutionResult:
    """A result of ``status`` (default ``error``) with ``error_type``, ``message`` and ``details``."""
    return ExecutionResult(
        status=status, error_type=error_type, error_message=message, executor=dict(details)
    )


def result_from_output(
    *,
    exit_code: int,
    stdout: OutputCapture,
    stderr: OutputCapture,
    details: Mapping[str, Any],
    subject: str = "process",
) -> ExecutionResult:
    """Map how a command ended (exit code, stdout, stderr) to a result.

    ``subject`` names the thing in messages (``process``, ``sandbox command``).
    """
    details = {
        **details,
        "stdout_bytes": stdout.total,
        "stdout_truncated": stdout.truncated,
        "stderr_truncated": stderr.truncated,
    }
    if exit_code != 0:
        return error_result(
            "ProcessExitError",
            _with_stderr(f"{subject} {describe_exit(exit_code)}", stderr),
            details,
        )
    if stdout.truncated:
        return error_result(
            "StdoutTooLarge",
            f"{subject} wrote {stdout.total} bytes on stdout, more than the limit of "
            f"{stdout.limit} bytes (stdout_limit): write only the JSON result on stdout "
            "and logs on stderr, or raise stdout_limit",
            details,
        )
    text = stdout.text()
    if not text.strip():
        return error_result(
            "EmptyOutput",
            _with_stderr(f"{subject} wrote nothing on stdout; expected a JSON result", stderr),
            details,
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        preview = text[:_PREVIEW_CHARS] + ("..." if len(text) > _PREVIEW_CHARS else "")
        return error_result(
            "InvalidJSON",
            _with_stderr(f"{subject} stdout is not valid JSON ({exc}): {preview!r}", stderr),
            details,
        )
    return result_from_mapping(value, executor=details)
