"""Modal Functions, served locally: lookup, calls, results, cancellation, containers.

A function is registered on the server (:meth:`LocalModal.register_function`)
under an app name and a function name, backed either by a local Python callable
(called with the arguments the SDK serialized, deserialized with the SDK's own
``modal._serialization``) or by a command run as a subprocess per call (the
arguments as JSON on stdin, the result as JSON on stdout).

Calls run on emulated containers: at most ``max_containers`` of them, each
taking ``max_inputs`` calls at once (``@modal.concurrent(max_inputs=...)``);
starting one takes ``cold_start`` seconds and an idle one is kept
``scaledown_window`` seconds.  Calls beyond that capacity wait in a queue, as
Modal's inputs do (the function's backlog, reported by ``FunctionGetCurrentStats``).

A finished call's output is kept for ``function_output_retention`` seconds (the
server's setting; None: for ever), then ``FunctionGetOutputs`` answers as Modal does
for an expired output (no output, nothing unfinished: the SDK raises
``OutputExpiredError``).  Unfinished calls are counted (and listed) so a test can
assert that nothing was left running.

The control-plane call path of modal 1.6.4 is served (no input plane, no blobs:
the metadata handed out raises the inline size limits so arguments and results
always travel inside the messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from .sandboxes import LocalProcess

__all__ = ["FunctionStatistics", "Functions", "RegisteredFunction"]

G = api_pb2.GenericResult
#: Inline payload limit handed to the SDK, so that it never uploads blobs.
INLINE_LIMIT = 256 * 1024 * 1024
#: Longest FunctionGetOutputs long poll.
MAX_OUTPUTS_POLL_S = 55.0


@dataclass
class RegisteredFunction:
    """A function the server serves (see :meth:`LocalModal.register_function`)."""

    app_name: str
    name: str
    environment_name: str
    handler: Callable[..., Any] | None
    command: tuple[str, ...] | None
    cold_start: float
    max_containers: int | None
    max_inputs: int
    scaledown_window: float
    timeout: float | None
    function_id: str = ""
    app_id: str = ""
    containers: list[_Container] = field(default_factory=list)
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Container:
    container_id: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    active: int = 0
    idle_since: float | None = None
    reaper: asyncio.Task[None] | None = None
    boot: asyncio.Task[None] | None = None


@dataclass
class _Call:
    function_call_id: str
    function: RegisteredFunction
    input_id: str
    input_jwt: str
    args: bytes
    data_format: api_pb2.DataFormat.ValueType
    invocation_type: int
    state: str = "queued"  # queued, running, finished, cancelled
    output: api_pb2.FunctionGetOutputsItem | None = None
    cleared: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    process: LocalProcess | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class FunctionStatistics:
    """Counts of function calls and containers since the server started."""

    #: Calls accepted (FunctionMap), by function name.
    calls_started: Mapping[str, int]
    #: Calls finished, by outcome: "success", "failure", "timeout", "cancelled".
    calls_finished: Mapping[str, int]
    calls_cancelled: int
    #: Calls executing now, and waiting for a container slot.
    calls_running: int
    calls_queued: int
    #: The most calls executing at once, per function.
    max_concurrent: Mapping[str, int]
    #: Containers started (each paid the cold start), per function.
    containers_started: Mapping[str, int]
    #: Containers alive (warm or busy) now, per function.
    containers_alive: Mapping[str, int]
    #: Ids (``fc-...``) of the calls not finished (queued or running): what is left running.
    live_calls: tuple[str, ...] = ()
    #: FunctionCallCancel requests received (for any call, finished or not).
    cancel_requests: int = 0
    #: FunctionGetOutputs answered "expired" (past the output retention, or cleared).
    outputs_expired: int = 0


class Functions:
    """Registered functions and their calls."""

    def __init__(
        self,
        new_id: Callable[[str], str],
        *,
        output_retention: Callable[[], float | None] = lambda: None,
        on_idle_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self._new_id = new_id
        self._output_retention = output_retention
        self._on_idle_changed = on_idle_changed
        self.by_name: dict[tuple[str, str, str], RegisteredFunction] = {}
        self.by_id: dict[str, RegisteredFunction] = {}
        self.calls: dict[str, _Call] = {}
        self.calls_started: Counter[str] = Counter()
        self.calls_finished: Counter[str] = Counter()
        self.containers_started: Counter[str] = Counter()
        self.max_concurrent: Counter[str] = Counter()
        self.cancel_requests = 0
        self.outputs_expired = 0
        self._running: Counter[str] = Counter()
        self._queued: Counter[str] = Counter()
        #: Calls without an output yet (queued or running), kept apart so counting them does
        #: not scan every call ever made.
        self._unfinished: dict[str, _Call] = {}

    # -- registration and lookup ---------------------------------------------------------

    def register(self, fn: RegisteredFunction, app_id: str) -> RegisteredFunction:
        key = (fn.environment_name, fn.app_name, fn.name)
        old = self.by_name.get(key)
        fn.function_id = old.function_id if old is not None else self._new_id("fu")
        fn.app_id = app_id
        self.by_name[key] = fn
        self.by_id[fn.function_id] = fn
        return fn

    def lookup(self, environment_name: str, app_name: str, name: str) -> RegisteredFunction:
        fn = self.by_name.get((environment_name, app_name, name))
        if fn is None:
            raise GRPCError(
                Status.NOT_FOUND,
                f"Function '{name}' not found in App '{app_name}' (environment '{environment_name}')",
            )
        return fn

    @staticmethod
    def handle_metadata(fn: RegisteredFunction) -> api_pb2.FunctionHandleMetadata:
        formats = [api_pb2.DATA_FORMAT_PICKLE, api_pb2.DATA_FORMAT_CBOR]
        return api_pb2.FunctionHandleMetadata(
            function_name=fn.name,
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            app_id=fn.app_id,
            max_object_size_bytes=INLINE_LIMIT,
            max_async_object_size_bytes=INLINE_LIMIT,
            supported_input_formats=formats,
            supported_output_formats=formats,
        )

    @staticmethod
    def function_data(fn: RegisteredFunction) -> api_pb2.FunctionData:
        return api_pb2.FunctionData(
            function_name=fn.name,
            function_type=api_pb2.Function.FUNCTION_TYPE_FUNCTION,
            timeout_secs=int(fn.timeout or 0),
            ranked_functions=[
                api_pb2.FunctionData.RankedFunction(
                    rank=0, function=api_pb2.Function(function_name=fn.name)
                )
            ],
        )

    # -- calls -----------------------------------------------------------------------------

    def start_call(
        self, fn: RegisteredFunction, item: api_pb2.FunctionPutInputsItem, invocation_type: int
    ) -> _Call:
        if item.input.WhichOneof("args_oneof") != "args":
            raise GRPCError(
                Status.UNIMPLEMENTED,
                "blob-uploaded function arguments are not implemented by the local Modal server",
            )
        call = _Call(
            function_call_id=self._new_id("fc"),
            function=fn,
            input_id=self._new_id("in"),
            input_jwt=self._new_id("jwt"),
            args=item.input.args,
            data_format=item.input.data_format or api_pb2.DATA_FORMAT_PICKLE,
            invocation_type=invocation_type,
        )
        self.calls[call.function_call_id] = call
        self._unfinished[call.function_call_id] = call
        self.calls_started[fn.name] += 1
        self._queued[fn.name] += 1
        call.task = asyncio.create_task(self._run(call), name=f"call {call.function_call_id}")
        return call

    def call(self, function_call_id: str) -> _Call:
        call = self.calls.get(function_call_id)
        if call is None:
            raise GRPCError(Status.NOT_FOUND, f"Function call {function_call_id} not found")
        return call

    async def _run(self, call: _Call) -> None:
        fn = call.function
        container: _Container | None = None
        queued = True
        try:
            container = await self._acquire(fn)
            await container.ready.wait()
            queued = False
            self._queued[fn.name] -= 1
            call.state = "running"
            self._running[fn.name] += 1
            self.max_concurrent[fn.name] = max(self.max_concurrent[fn.name], self._running[fn.name])
            try:
                if fn.timeout is not None:
                    result = await asyncio.wait_for(self._execute(call), fn.timeout)
                else:
                    result = await self._execute(call)
            except TimeoutError:
                self._finish(call, _timeout_result(fn), "timeout")
            else:
                self._finish(call, *result)
            finally:
                self._running[fn.name] -= 1
        except asyncio.CancelledError:
            if call.process is not None:
                call.process.kill_now()
            if call.output is None:
                cancelled = G(
                    status=G.GENERIC_STATUS_TERMINATED, exception="Function call was cancelled"
                )
                self._finish(call, cancelled, "cancelled")
            raise
        finally:
            if queued:
                self._queued[fn.name] -= 1
            if container is not None:
                self._release(fn, container)

    async def _execute(self, call: _Call) -> tuple[G, str]:
        fn = call.function
        from modal._serialization import deserialize_data_format, serialize_data_format

        args, kwargs = deserialize_data_format(call.args, call.data_format, None)
        if fn.command is not None:
            return await self._execute_command(call, args, kwargs)
        assert fn.handler is not None
        try:
            if inspect.iscoroutinefunction(fn.handler):
                value = await fn.handler(*args, **kwargs)
            else:
                value = await asyncio.to_thread(fn.handler, *args, **kwargs)
        except Exception as exc:
            return (_exception_result(exc, call), "failure")
        data = serialize_data_format(value, call.data_format)
        return (G(status=G.GENERIC_STATUS_SUCCESS, data=data), "success")

    async def _execute_command(
        self, call: _Call, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[G, str]:
        from modal._serialization import serialize_data_format

        assert call.function.command is not None
        process = LocalProcess(
            call.function.command,
            env={k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
            | {"MODAL_FUNCTION_CALL_ID": call.function_call_id},
            cwd=None,
        )
        call.process = process
        if not await process.spawn():
            return (
                G(status=G.GENERIC_STATUS_FAILURE, exception=process.spawn_error or ""),
                "failure",
            )
        try:
            payload = json.dumps({"args": list(args), "kwargs": dict(kwargs)}).encode()
            await process.write_stdin(0, payload, True)
            await process.exited.wait()
        finally:
            await process.stop()
        out, err = process.stdout.getvalue(), process.stderr.getvalue()
        if process.returncode != 0:
            message = (
                f"command {call.function.command[0]!r} exited with {process.returncode}: "
                + err.decode(errors="replace")[-2000:]
            )
            return (G(status=G.GENERIC_STATUS_FAILURE, exception=message), "failure")
        try:
            value = json.loads(out) if out.strip() else None
        except ValueError:
            value = out.decode(errors="replace")
        data = serialize_data_format(value, call.data_format)
        return (G(status=G.GENERIC_STATUS_SUCCESS, data=data), "success")

    def _finish(self, call: _Call, result: G, outcome: str) -> None:
        call.output = api_pb2.FunctionGetOutputsItem(
            result=result,
            idx=0,
            input_id=call.input_id,
            data_format=call.data_format,
            output_created_at=time.time(),
        )
        call.state = "cancelled" if outcome == "cancelled" else "finished"
        call.finished_at = time.monotonic()
        self.calls_finished[outcome] += 1
        self._unfinished.pop(call.function_call_id, None)
        call.done.set()
        self._on_idle_changed()

    def cancel(self, function_call_id: str) -> None:
        call = self.call(function_call_id)
        self.cancel_requests += 1
        if call.output is None and call.task is not None:
            call.task.cancel()

    def _expired(self, call: _Call) -> bool:
        """The call's output was kept longer than the retention: Modal no longer has it."""
        retention = self._output_retention()
        return (
            retention is not None
            and call.finished_at is not None
            and time.monotonic() - call.finished_at > retention
        )

    async def outputs(
        self, req: api_pb2.FunctionGetOutputsRequest
    ) -> api_pb2.FunctionGetOutputsResponse:
        call = self.call(req.function_call_id)
        if call.output is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    call.done.wait(), min(max(req.timeout, 0.0), MAX_OUTPUTS_POLL_S)
                )
        gone = call.cleared or (call.output is not None and self._expired(call))
        if call.output is None or gone:
            if gone:
                self.outputs_expired += 1
            return api_pb2.FunctionGetOutputsResponse(num_unfinished_inputs=0 if gone else 1)
        resp = api_pb2.FunctionGetOutputsResponse(
            outputs=[call.output], idxs=[0], num_unfinished_inputs=0
        )
        if req.clear_on_success and call.output.result.status == G.GENERIC_STATUS_SUCCESS:
            call.cleared = True
        return resp

    def current_stats(self, fn: RegisteredFunction) -> api_pb2.FunctionStats:
        """What ``Function.get_current_stats()`` reports: backlog, containers, running inputs."""
        running = self._running[fn.name]
        backlog = self._queued[fn.name]
        if fn.max_containers is None:
            headroom = 0
        else:
            headroom = max(0, fn.max_containers * fn.max_inputs - running - backlog)
        return api_pb2.FunctionStats(
            backlog=backlog,
            num_total_tasks=len(fn.containers),
            num_running_inputs=running,
            input_headroom=headroom,
        )

    # -- containers ------------------------------------------------------------------------

    async def _acquire(self, fn: RegisteredFunction) -> _Container:
        while True:
            for container in fn.containers:
                if container.active < fn.max_inputs:
                    self._take(container)
                    return container
            if fn.max_containers is None or len(fn.containers) < fn.max_containers:
                container = _Container(self._new_id("ta"))
                fn.containers.append(container)
                self.containers_started[fn.name] += 1
                self._take(container)
                container.boot = asyncio.create_task(self._boot(fn, container))
                return container
            fn.slot_freed.clear()
            await fn.slot_freed.wait()

    @staticmethod
    def _take(container: _Container) -> None:
        container.active += 1
        container.idle_since = None
        if container.reaper is not None:
            container.reaper.cancel()
            container.reaper = None

    @staticmethod
    async def _boot(fn: RegisteredFunction, container: _Container) -> None:
        if fn.cold_start > 0:
            await asyncio.sleep(fn.cold_start)
        container.ready.set()

    def _release(self, fn: RegisteredFunction, container: _Container) -> None:
        container.active -= 1
        if container.active == 0:
            container.idle_since = time.monotonic()
            container.reaper = asyncio.create_task(self._scale_down(fn, container))
        fn.slot_freed.set()

    @staticmethod
    async def _scale_down(fn: RegisteredFunction, container: _Container) -> None:
        await asyncio.sleep(fn.scaledown_window)
        if container.active == 0 and container in fn.containers:
            fn.containers.remove(container)
            fn.slot_freed.set()

    # -- statistics and shutdown ---------------------------------------------------------

    def busy(self) -> bool:
        return bool(self._unfinished)

    def statistics(self) -> FunctionStatistics:
        unfinished = self._unfinished.values()
        return FunctionStatistics(
            calls_started=dict(self.calls_started),
            calls_finished=dict(self.calls_finished),
            calls_cancelled=self.calls_finished.get("cancelled", 0),
            calls_running=sum(1 for c in unfinished if c.state == "running"),
            calls_queued=sum(1 for c in unfinished if c.state == "queued"),
            max_concurrent=dict(self.max_concurrent),
            containers_started=dict(self.containers_started),
            containers_alive={
                fn.name: len(fn.containers) for fn in self.by_id.values() if fn.containers
            },
            live_calls=tuple(sorted(self._unfinished)),
            cancel_requests=self.cancel_requests,
            outputs_expired=self.outputs_expired,
        )

    async def shutdown(self) -> None:
        tasks = [c.task for c in self.calls.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for fn in self.by_id.values():
            for container in fn.containers:
                if container.reaper is not None:
                    container.reaper.cancel()


def _timeout_result(fn: RegisteredFunction) -> G:
    return G(
        status=G.GENERIC_STATUS_TIMEOUT,
        exception=f"Function '{fn.name}' timed out after {fn.timeout:g}s",
    )


def _exception_result(exc: BaseException, call: _Call) -> G:
    """A failed input the way Modal reports it: the pickled exception and its traceback."""
    from modal._serialization import pickle_exception, pickle_traceback

    serialized_tb, tb_line_cache = pickle_traceback(exc, call.function_call_id)
    return G(
        status=G.GENERIC_STATUS_FAILURE,
        exception=repr(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        data=pickle_exception(exc),
        serialized_tb=serialized_tb,
        tb_line_cache=tb_line_cache,
    )
