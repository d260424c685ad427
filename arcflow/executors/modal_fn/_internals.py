"""Where the ``modal-fn:`` executor reaches below modal's public API, in one module.

* **The output of a call, before it is turned into a value or an exception.**
  ``FunctionCall.get()`` polls the call's outputs and then either returns the value or
  raises the remote exception, so a remote ``ConnectionError`` and a lost connection to
  Modal look the same.  arcflow polls the outputs the way ``get()`` does
  (``_Invocation.pop_function_call_outputs``, ``clear_on_success=False`` as ``get()``),
  so errors of the poll are the control plane's (retried), and then turns the output
  into a value or an exception with the SDK's own ``_process_result`` (that exception is
  the scenario's: an ``error`` outcome).
* **The implementation object of a client**, to poll on a connection of arcflow's
  choosing (see :class:`~.sdk.Lanes`).

Plus what the ``modal:`` executor already reads (the SDK's event loop, retry-after
hints: :mod:`arcflow.executors.modal._internals`).  :func:`check` verifies all of them
right after ``import modal``.
"""

from __future__ import annotations

from typing import Any

from ..modal import _internals as sandbox_internals

#: Longest one poll for a call's output holds a stream (the SDK's own long-poll bound).
OUTPUTS_POLL_S = 55.0


def check(modal_: Any) -> None:
    """Raise RuntimeError naming what is missing if this modal lacks what arcflow uses."""
    sandbox_internals.check(modal_)
    import modal._functions as functions
    import modal._utils.function_utils as function_utils

    missing = [
        name
        for owner, name in (
            (functions, "_Invocation"),
            (function_utils, "_process_result"),
        )
        if not hasattr(owner, name)
    ]
    invocation = getattr(functions, "_Invocation", None)
    if invocation is not None and not hasattr(invocation, "pop_function_call_outputs"):
        missing.append("_Invocation.pop_function_call_outputs")
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
    the ``FunctionGetOutputsResponse`` (``outputs`` empty: not finished, or gone when
    ``num_unfinished_inputs`` is 0).  Raises what the control plane raised."""
    from modal._functions import _Invocation

    invocation = _Invocation(client._stub, call_id, client)
    return await invocation.pop_function_call_outputs(
        index=0, timeout=hold_s, clear_on_success=False
    )


async def output_value(client: Any, item: Any) -> Any:
    """(asyncio) The value of an output item, or raise the remote exception as the SDK does."""
    from modal._utils.function_utils import _process_result

    return await _process_result(item.result, item.data_format, client._stub, client)


def retry_after(exc: BaseException) -> float | None:
    """Modal's retry-after hint of a refusal, if any."""
    return sandbox_internals.retry_after(exc)


def sdk_loop() -> Any:
    """The SDK's event loop (started if needed); call it in a thread."""
    return sandbox_internals.sdk_loop()
