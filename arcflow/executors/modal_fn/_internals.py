"""Where the ``modal-fn:`` executor reaches below modal's public API, in one module.

* **The output of a call, before it is turned into a value or an exception.**
  ``FunctionCall.get()`` polls the call's outputs and then either returns the value or
  raises the remote exception, so a remote ``ConnectionError`` and a lost connection to
  Modal look the same.  arcflow sends the poll ``get()`` sends (``FunctionGetOutputs``
  on the client's ``_stub`` with the SDK's ``Retry``, ``clear_on_success=False`` as
  ``get()``), one request at a time, so errors of the poll are the control plane's
  (retried) and an expired output is seen at once, and then turns the output
  into a value or an exception with the SDK's own ``_process_result`` (that exception is
  the scenario's: an ``error`` outcome).
* **The implementation object of a client**, to poll on a connection of arcflow's
  choosing (see :class:`~.ops.Lanes`).

Plus what the ``modal:`` executor already reads (the SDK's event loop, retry-after
hints: :mod:`arcflow.executors.modal._internals`).  :func:`check` verifies all of them
right after ``import modal``.
"""

from __future__ import annotations

from typing import Any

from ..modal import _internals as sandbox_internals

#: Longest one poll for a call's output holds a stream (the SDK's own long-poll bound).
OUTPUTS_POLL_S = 55.0
#: Seconds a poll's request may take beyond its hold before it is retried (the SDK's).
_POLL_GRACE_S = 5.0


def check(modal_: Any) -> None:
    """Raise RuntimeError naming what is missing if this modal lacks what arcflow uses."""
    sandbox_internals.check(modal_)
    import modal._utils.function_utils as function_utils
    import modal._utils.grpc_utils as grpc_utils

    missing = [
        name
        for owner, name in (
            (function_utils, "_process_result"),
            (grpc_utils, "Retry"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        version = str(getattr(modal_, "__version__", "?"))
        raise RuntimeError(
            f"modal {version} lacks {missing}; arcflow's modal-fn: executor supports "
            f"modal{sandbox_internals.SUPPORTED}"
        )


def impl(obj: Any) -> Any:
    """The implementation object behind a public modal object (a ``Client``, a ``Function``)."""
    from modal._utils.async_utils import synchronizer

    return synchronizer._translate_in(obj)  # type: ignore[no-untyped-call]


async def poll_outputs(client: Any, call_id: str, hold_s: float) -> Any:
    """(asyncio, on the SDK loop) One poll of a call's output, held up to ``hold_s`` seconds:
    the ``FunctionGetOutputsResponse`` (``outputs`` empty: not finished yet, or gone when
    ``num_unfinished_inputs`` is 0).  Raises what the control plane raised.

    One request, as each round of the SDK's own ``pop_function_call_outputs`` (which
    loops until its timeout, so an expired output would hold it for the whole timeout
    before ``get()`` could say so).
    """
    import time

    from modal._utils.grpc_utils import Retry
    from modal_proto import api_pb2

    request = api_pb2.FunctionGetOutputsRequest(
        function_call_id=call_id,
        timeout=hold_s,
        last_entry_id="0-0",
        clear_on_success=False,
        requested_at=time.time(),
        start_idx=0,
        end_idx=0,
    )
    return await client._stub.FunctionGetOutputs(
        request, retry=Retry(attempt_timeout=hold_s + _POLL_GRACE_S)
    )


async def output_value(client: Any, item: Any) -> Any:
    """(asyncio) The value of an output item, or raise the remote exception as the SDK does."""
    from modal._utils.function_utils import _process_result

    return await _process_result(item.result, item.data_format, client._stub, client)


def retry_after(exc: BaseException) -> float | None:
    """Modal's retry-after hint of a refusal, if any."""
    return sandbox_internals.retry_after(exc)
