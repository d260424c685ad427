"""The few places where arcflow reaches below modal's public API, in one module.

* **The SDK's own event loop.**  Modal runs every ``.aio`` call on an asyncio loop in a
  thread of its own (synchronicity); a coroutine already running on that loop calls
  ``.aio`` methods directly, with no thread hop per call.  arcflow runs each attempt's
  sandbox lifecycle there as one coroutine (:mod:`.bridge`).
* **Raw output bytes.**  ``sandbox.stdout`` decodes strict UTF-8 and raises on a bad
  byte; arcflow reads the bytes underneath (of a sandbox and of an exec; the reader the SDK uses for
  ``exec(..., text=False)``) and decodes with replacement, as the ``process:`` executor.
* **Retry-after hints.**  Read from a RESOURCE_EXHAUSTED error the way the SDK reads them.

:func:`check` verifies all of them right after ``import modal``, so a modal release that
moved them fails at start with a clear message, not in the middle of a run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

#: The modal versions these internals were checked against (``pyproject.toml`` pins them).
SUPPORTED = ">=1.6.4,<1.7"


def check(modal_: Any) -> None:
    """Raise RuntimeError naming what is missing if this modal lacks what arcflow uses."""
    import modal._utils.async_utils as async_utils
    import modal._utils.grpc_utils as grpc_utils
    import modal.io_streams as io_streams
    from modal_proto import api_pb2

    missing = [
        name
        for owner, name in (
            (async_utils, "synchronizer"),
            (grpc_utils, "get_server_retry_policy"),
            (api_pb2, "RPCRetryPolicy"),
            (io_streams, "_BytesStreamReaderThroughCommandRouter"),
            (io_streams, "_StreamReaderThroughServer"),
        )
        if not hasattr(owner, name)
    ]
    version = str(getattr(modal_, "__version__", "?"))
    if missing or not hasattr(async_utils.synchronizer, "_get_loop"):
        raise RuntimeError(
            f"modal {version} lacks {missing or ['_get_loop']}; "
            f"arcflow's modal: executor supports modal{SUPPORTED}"
        )
    if not version.startswith("1.6."):
        logging.getLogger("arcflow.executors.modal").warning(
            "modal %s: arcflow's modal: executor is tested with modal%s", version, SUPPORTED
        )


def sdk_loop() -> asyncio.AbstractEventLoop:
    """The SDK's event loop (started if needed).  Blocks while it starts: call it in a thread."""
    from modal._utils.async_utils import synchronizer

    loop: asyncio.AbstractEventLoop = synchronizer._get_loop(start=True)
    return loop


def retry_after(exc: BaseException) -> float | None:
    """Modal's retry-after hint in seconds (RPCRetryPolicy in the error details), if any."""
    from modal_proto import api_pb2

    # The SDK keeps the decoded grpc-status-details on the error (reading ``.details``
    # instead warns that grpclib's attributes are going away).
    for entry in getattr(exc, "_grpc_details", None) or ():
        if isinstance(entry, api_pb2.RPCRetryPolicy):
            return max(float(entry.retry_after_secs), 0.0)
    return None


def raw_output(sandbox: Any, stream: str) -> AsyncIterator[bytes]:
    """(asyncio, on the SDK loop) The bytes of ``sandbox.stdout``/``.stderr``, undecoded."""
    import modal.io_streams as io_streams
    from modal._utils.async_utils import synchronizer

    reader = synchronizer._translate_in(getattr(sandbox, stream))  # type: ignore[no-untyped-call]
    impl = reader._impl
    params = getattr(impl, "_params", None)
    if params is not None:  # V2 sandboxes: the task command router
        raw: AsyncIterator[bytes] = aiter(io_streams._BytesStreamReaderThroughCommandRouter(params))
        return raw
    if isinstance(impl, io_streams._StreamReaderThroughServer):  # V1: the logs API, as bytes
        logs: AsyncIterator[bytes] = impl._get_logs()
        return logs
    raise RuntimeError(f"unsupported modal stream reader {type(impl).__name__}")


def drop_unsent_stdin(stdin: Any) -> None:
    """Forget stdin bytes a failed drain() left buffered, so the next drain sends only EOF."""
    from modal._utils.async_utils import synchronizer

    try:
        buffer = synchronizer._translate_in(stdin)._impl._buffer  # type: ignore[no-untyped-call]
        buffer.clear()
    except Exception:  # best effort: then the EOF carries the bytes again
        pass
