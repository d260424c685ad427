"""The task command router: the worker-side service V2 sandboxes and ``exec`` use for stdio.

In Modal the SDK reaches it at the URL (and with the JWT) that
``SandboxCreateV2``/``SandboxGetCommandRouterAccess`` hand out, on a connection
of its own per sandbox.  Here it listens on a second port of 127.0.0.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grpclib import GRPCError, Status
from modal_proto import task_command_router_grpc
from modal_proto import task_command_router_pb2 as sr_pb2

from ._grpc import fill_unimplemented

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .backend import Backend
    from .sandboxes import LocalExec, LocalProcess, LocalSandbox, OutputBuffer

__all__ = ["TaskCommandRouter"]


async def _recv(stream: Stream[Any, Any]) -> Any:
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message missing")
    return request


class TaskCommandRouter(task_command_router_grpc.TaskCommandRouterBase):
    """TaskCommandRouter service backed by a :class:`~.backend.Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def _check_size(self, data: bytes) -> None:
        limit = self.backend.settings.max_stdin_message_bytes
        if len(data) > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"stdin write of {len(data)} bytes exceeds the limit of {limit} bytes per message",
            )

    async def _stream_output(
        self, stream: Stream[Any, Any], buffer: OutputBuffer, offset: int, v2: bool
    ) -> None:
        chunk = self.backend.settings.stdio_chunk_bytes
        while True:
            got = await buffer.read(offset, chunk)
            if got is None:
                return
            start, data = got
            if v2:
                await stream.send_message(
                    sr_pb2.SandboxStdioReadV2Response(data=data, starting_offset=start)
                )
            else:
                await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=data))
            offset = start + len(data)

    # -- V2 sandbox entrypoint stdio ------------------------------------------------------

    async def SandboxStdinWriteV2(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.SandboxStdinWriteV2Request = await _recv(stream)
        self._check_size(req.data)
        sb = self.backend.sandbox_by_task(req.task_id)
        error = await sb.process.write_stdin(req.offset, req.data, req.eof)
        if error is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, error)
        await stream.send_message(sr_pb2.SandboxStdinWriteV2Response())

    async def SandboxStdioReadV2(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.SandboxStdioReadV2Request = await _recv(stream)
        sb = self.backend.sandbox_by_task(req.task_id)
        if req.file_descriptor == sr_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDERR:
            buffer = sb.process.stderr
        elif req.file_descriptor == sr_pb2.SANDBOX_STDIO_FILE_DESCRIPTOR_STDOUT:
            buffer = sb.process.stdout
        else:
            raise GRPCError(Status.INVALID_ARGUMENT, "unsupported file descriptor")
        await self._stream_output(stream, buffer, req.offset, v2=True)

    async def SandboxWaitUntilReady(self, stream: Stream[Any, Any]) -> None:
        raise GRPCError(
            Status.UNIMPLEMENTED,
            "TaskCommandRouter/SandboxWaitUntilReady (readiness probes) is not implemented "
            "by arcflow's local Modal server",
        )

    # -- exec -------------------------------------------------------------------------

    def _exec(self, task_id: str, exec_id: str) -> tuple[LocalSandbox, LocalExec]:
        sb = self.backend.sandbox_by_task(task_id)
        ex = sb.execs.get(exec_id)
        if ex is None:
            raise GRPCError(Status.NOT_FOUND, f"exec {exec_id} not found in task {task_id}")
        return sb, ex

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStartRequest = await _recv(stream)
        backend = self.backend
        sb = backend.sandbox_by_task(req.task_id)
        await sb.process.spawned.wait()
        if sb.result is not None or not sb.process.alive:
            raise GRPCError(Status.FAILED_PRECONDITION, "Sandbox has already finished")
        if req.HasField("pty_info"):
            raise GRPCError(Status.UNIMPLEMENTED, "exec with a PTY is not implemented locally")
        env: dict[str, str] = {}
        for secret_id in req.secret_ids:
            env.update(backend.secret_env(secret_id))
        for source in req.secret_sources:
            which = source.WhichOneof("source")
            if which == "secret_id":
                env.update(backend.secret_env(source.secret_id))
            elif which == "env":
                env.update(source.env.contents)
        env.update({e.key: e.value for e in req.env})
        new = req.exec_id not in sb.execs
        await sb.start_exec(
            req.exec_id,
            list(req.command_args),
            env=env,
            cwd=req.workdir if req.HasField("workdir") else None,
            capture_stdout=req.stdout_config
            != sr_pb2.TaskExecStdoutConfig.TASK_EXEC_STDOUT_CONFIG_DEVNULL,
            capture_stderr=req.stderr_config
            != sr_pb2.TaskExecStderrConfig.TASK_EXEC_STDERR_CONFIG_DEVNULL,
            lifetime=float(req.timeout_secs) if req.HasField("timeout_secs") else None,
        )
        if new:
            backend.execs_started += 1
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStdinWriteRequest = await _recv(stream)
        self._check_size(req.data)
        _, ex = self._exec(req.task_id, req.exec_id)
        error = await ex.process.write_stdin(req.offset, req.data, req.eof)
        if error is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, error)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        first: sr_pb2.TaskExecStdinWriteStreamRequest = await _recv(stream)
        if first.WhichOneof("payload") != "start":
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be `start`")
        _, ex = self._exec(first.start.task_id, first.start.exec_id)
        process: LocalProcess = ex.process
        offset = first.start.offset
        if offset != process.stdin_offset:
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"stream starts at offset {offset}, {process.stdin_offset} bytes were written",
            )
        async for msg in stream:
            which = msg.WhichOneof("payload")
            if which == "data":
                self._check_size(msg.data)
                error = await process.write_stdin(offset, msg.data, False)
                if error is not None:
                    raise GRPCError(Status.FAILED_PRECONDITION, error)
                offset += len(msg.data)
            elif which == "end":
                await process.write_stdin(offset, b"", True)
                break
            else:
                raise GRPCError(Status.INVALID_ARGUMENT, "expected `data` or `end`")
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStdinStatusRequest = await _recv(stream)
        _, ex = self._exec(req.task_id, req.exec_id)
        await stream.send_message(
            sr_pb2.TaskExecStdinStatusResponse(
                num_bytes_written=ex.process.stdin_offset, closed=ex.process.stdin_closed
            )
        )

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecStdioReadRequest = await _recv(stream)
        _, ex = self._exec(req.task_id, req.exec_id)
        if req.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR:
            buffer = ex.process.stderr
        elif req.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDOUT:
            buffer = ex.process.stdout
        else:
            raise GRPCError(Status.INVALID_ARGUMENT, "unsupported file descriptor")
        await self._stream_output(stream, buffer, req.offset, v2=False)

    @staticmethod
    def _exit(ex: LocalExec, resp: Any) -> Any:
        code, sig = ex.process.exit_status()
        if code is not None:
            resp.code = code
        elif sig is not None:
            resp.signal = sig
        return resp

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecPollRequest = await _recv(stream)
        _, ex = self._exec(req.task_id, req.exec_id)
        await stream.send_message(self._exit(ex, sr_pb2.TaskExecPollResponse()))

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        req: sr_pb2.TaskExecWaitRequest = await _recv(stream)
        _, ex = self._exec(req.task_id, req.exec_id)
        await ex.process.exited.wait()
        await stream.send_message(self._exit(ex, sr_pb2.TaskExecWaitResponse()))


def _record_unimplemented(self: TaskCommandRouter, name: str) -> None:
    self.backend.unimplemented[f"TaskCommandRouter/{name}"] += 1


fill_unimplemented(TaskCommandRouter, service="TaskCommandRouter", record=_record_unimplemented)
