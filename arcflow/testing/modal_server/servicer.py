"""The control plane: ``modal.client.ModalClient`` RPCs the SDK's sandbox path sends.

Both sandbox backends of modal 1.6.4 are served: V2 (the default: ``*V2`` RPCs
here, stdio through the task command router) and V1 (``MODAL_SANDBOX_V2=0``,
or a GPU/PTY sandbox: stdio through ``SandboxGetLogs``/``SandboxStdinWrite``).
Every other RPC answers UNIMPLEMENTED with its name.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from modal_proto import api_grpc, api_pb2

from ._grpc import fill_unimplemented

if TYPE_CHECKING:
    from grpclib.server import Stream

    from .backend import Backend
    from .functions import Functions

__all__ = ["ControlPlane"]

G = api_pb2.GenericResult
#: Longest a long poll (SandboxWait, ImageJoinStreaming, SandboxGetLogs) is held.
MAX_LONG_POLL_S = 55.0


async def _recv(stream: Stream[Any, Any]) -> Any:
    request = await stream.recv_message()
    if request is None:
        raise GRPCError(Status.INVALID_ARGUMENT, "request message missing")
    return request


class ControlPlane(api_grpc.ModalClientBase):
    """ModalClient service backed by a :class:`~.backend.Backend`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # -- client, auth, environments, apps ---------------------------------------------

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        await _recv(stream)
        await stream.send_message(
            api_pb2.ClientHelloResponse(image_builder_version=_builder_version())
        )

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        await _recv(stream)
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=self.backend.client_token()))

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.EnvironmentGetOrCreateRequest = await _recv(stream)
        name = self.backend.env_name(req.deployment_name)
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=f"en-{name}",
                metadata=api_pb2.EnvironmentMetadata(
                    name=name,
                    settings=api_pb2.EnvironmentSettings(
                        image_builder_version=_builder_version(), webhook_suffix="local"
                    ),
                ),
            )
        )

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.AppGetOrCreateRequest = await _recv(stream)
        create = req.object_creation_type in (
            api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
            api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
        )
        app = self.backend.app_get_or_create(req.app_name, req.environment_name, create)
        await stream.send_message(
            api_pb2.AppGetOrCreateResponse(
                app_id=app.app_id,
                handle_metadata=api_pb2.AppHandleMetadata(
                    app_id=app.app_id, environment_name=app.environment_name
                ),
            )
        )

    async def AppClientDisconnect(self, stream: Stream[Any, Any]) -> None:
        await _recv(stream)
        await stream.send_message(empty_pb2.Empty())

    async def AppHeartbeat(self, stream: Stream[Any, Any]) -> None:
        await _recv(stream)
        await stream.send_message(empty_pb2.Empty())

    # -- images and secrets ------------------------------------------------------------

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.ImageGetOrCreateRequest = await _recv(stream)
        img = self.backend.image_get_or_create(req.image)
        resp = api_pb2.ImageGetOrCreateResponse(image_id=img.image_id)
        if img.result is not None:  # a cache hit: built before
            resp.result.CopyFrom(img.result)
            resp.metadata.CopyFrom(_image_metadata())
        await stream.send_message(resp)

    async def ImageJoinStreaming(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.ImageJoinStreamingRequest = await _recv(stream)
        img = self.backend.images.get(req.image_id)
        if img is None:
            raise GRPCError(Status.NOT_FOUND, f"Image {req.image_id} not found")
        timeout = min(req.timeout or MAX_LONG_POLL_S, MAX_LONG_POLL_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(img.built.wait(), timeout)
        if img.result is None:
            return  # the client calls again
        await stream.send_message(
            api_pb2.ImageJoinStreamingResponse(
                result=img.result, metadata=_image_metadata(), entry_id="1", eof=True
            )
        )

    async def SecretGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SecretGetOrCreateRequest = await _recv(stream)
        backend = self.backend
        kind = req.object_creation_type
        env = dict((e.key, e.value) for e in req.env_dict) if req.env_dict else {}
        if not req.deployment_name:
            secret = backend.add_secret(None, env, req.environment_name)
        else:
            key = (backend.env_name(req.environment_name), req.deployment_name)
            secret = backend.secrets_by_name.get(key)  # type: ignore[assignment]
            if kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS and secret is not None:
                raise GRPCError(
                    Status.ALREADY_EXISTS, f"Secret '{req.deployment_name}' already exists"
                )
            if kind == api_pb2.OBJECT_CREATION_TYPE_CREATE_OVERWRITE_IF_EXISTS or (
                secret is None
                and kind
                in (
                    api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING,
                    api_pb2.OBJECT_CREATION_TYPE_CREATE_FAIL_IF_EXISTS,
                )
            ):
                secret = backend.add_secret(req.deployment_name, env, req.environment_name)
            if secret is None:
                raise GRPCError(
                    Status.NOT_FOUND,
                    f"Secret '{req.deployment_name}' not found in environment '{key[0]}'",
                )
            missing = [k for k in req.required_keys if k not in secret.env]
            if missing:
                raise GRPCError(
                    Status.NOT_FOUND,
                    f"Secret '{req.deployment_name}' is missing keys: {', '.join(missing)}",
                )
        await stream.send_message(
            api_pb2.SecretGetOrCreateResponse(
                secret_id=secret.secret_id,
                metadata=api_pb2.SecretMetadata(
                    name=secret.name or "",
                    environment_name=secret.environment_name,
                    keys=sorted(secret.env),
                ),
            )
        )

    # -- sandboxes: V2 (the default in modal 1.6) ---------------------------------------

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxCreateV2Request = await _recv(stream)
        backend = self.backend
        sb = backend.create_sandbox(
            app_id=req.app_id,
            definition=req.definition,
            secret_sources=list(req.secret_sources),
            tags=list(req.tags),
            version=2,
        )
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=sb.sandbox_id,
                task_id=sb.task_id,
                metadata=api_pb2.SandboxHandleMetadata(app_id=sb.app_id),
                command_router_access=api_pb2.CommandRouterAccess(
                    url=backend.router_url, jwt=backend.router_token(sb.task_id)
                ),
            )
        )

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxGetCommandRouterAccessRequest = await _recv(stream)
        backend = self.backend
        if req.sandbox_id:
            sb = backend.sandbox(req.sandbox_id)
        else:
            sb = backend.sandbox_by_task(req.task_id)
        await stream.send_message(
            api_pb2.SandboxGetCommandRouterAccessResponse(
                url=backend.router_url, jwt=backend.router_token(sb.task_id)
            )
        )

    async def TaskGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.TaskGetCommandRouterAccessRequest = await _recv(stream)
        backend = self.backend
        sb = backend.sandbox_by_task(req.task_id)
        await stream.send_message(
            api_pb2.TaskGetCommandRouterAccessResponse(
                url=backend.router_url, jwt=backend.router_token(sb.task_id)
            )
        )

    async def SandboxWaitV2(self, stream: Stream[Any, Any]) -> None:
        await self._wait(stream)

    async def SandboxWait(self, stream: Stream[Any, Any]) -> None:
        await self._wait(stream)

    async def _wait(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxWaitRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        await sb.wait_finished(min(max(req.timeout, 0.0), MAX_LONG_POLL_S))
        resp = api_pb2.SandboxWaitResponse(metadata=api_pb2.SandboxHandleMetadata(app_id=sb.app_id))
        if sb.result is not None:
            resp.result.CopyFrom(sb.result)
            resp.metadata.result.CopyFrom(sb.result)
        await stream.send_message(resp)

    async def SandboxGetTaskIdV2(self, stream: Stream[Any, Any]) -> None:
        await self._get_task_id(stream)

    async def SandboxGetTaskId(self, stream: Stream[Any, Any]) -> None:
        await self._get_task_id(stream)

    async def _get_task_id(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxGetTaskIdRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        if req.wait_until_ready and req.timeout > 0:
            await asyncio.wait(
                [asyncio.ensure_future(sb.process.spawned.wait())],
                timeout=min(req.timeout, MAX_LONG_POLL_S),
            )
        resp = api_pb2.SandboxGetTaskIdResponse()
        if sb.version == 2 or sb.state != "starting" or sb.result is not None:
            resp.task_id = sb.task_id
        if sb.result is not None:
            resp.task_result.CopyFrom(sb.result)
        await stream.send_message(resp)

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        await self._terminate(stream)

    async def SandboxTerminate(self, stream: Stream[Any, Any]) -> None:
        await self._terminate(stream)

    async def _terminate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxTerminateRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        existing = await self.backend.terminate(sb)
        resp = api_pb2.SandboxTerminateResponse()
        if existing is not None:
            resp.existing_result.CopyFrom(existing)
        await stream.send_message(resp)

    async def SandboxListV2(self, stream: Stream[Any, Any]) -> None:
        await self._list(stream, version=None)

    async def SandboxList(self, stream: Stream[Any, Any]) -> None:
        await self._list(stream, version=1)

    async def _list(self, stream: Stream[Any, Any], version: int | None) -> None:
        req: api_pb2.SandboxListRequest = await _recv(stream)
        infos = []
        for sb in self.backend.list_sandboxes(req, version):
            info = api_pb2.SandboxInfo(
                id=sb.sandbox_id,
                created_at=sb.created_at,
                app_id=sb.app_id,
                tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sb.tags.items()],
                name=sb.name or "",
                image_id=sb.image_id,
                timeout_secs=int(sb.timeout),
                task_info=api_pb2.TaskInfo(id=sb.task_id, sandbox_id=sb.sandbox_id),
                metadata=api_pb2.SandboxHandleMetadata(app_id=sb.app_id),
            )
            if sb.result is not None:
                info.task_info.result.CopyFrom(sb.result)
                info.metadata.result.CopyFrom(sb.result)
            infos.append(info)
        await stream.send_message(api_pb2.SandboxListResponse(sandboxes=infos))

    async def SandboxTagsSetV2(self, stream: Stream[Any, Any]) -> None:
        await self._tags_set(stream)

    async def SandboxTagsSet(self, stream: Stream[Any, Any]) -> None:
        await self._tags_set(stream)

    async def _tags_set(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxTagsSetRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        sb.tags = {t.tag_name: t.tag_value for t in req.tags}
        await stream.send_message(empty_pb2.Empty())

    async def SandboxTagsGetV2(self, stream: Stream[Any, Any]) -> None:
        await self._tags_get(stream)

    async def SandboxTagsGet(self, stream: Stream[Any, Any]) -> None:
        await self._tags_get(stream)

    async def _tags_get(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxTagsGetRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        await stream.send_message(
            api_pb2.SandboxTagsGetResponse(
                tags=[api_pb2.SandboxTag(tag_name=k, tag_value=v) for k, v in sb.tags.items()]
            )
        )

    async def SandboxGetFromNameV2(self, stream: Stream[Any, Any]) -> None:
        await self._from_name(stream, version=2)

    async def SandboxGetFromName(self, stream: Stream[Any, Any]) -> None:
        await self._from_name(stream, version=1)

    async def _from_name(self, stream: Stream[Any, Any], version: int) -> None:
        req: api_pb2.SandboxGetFromNameRequest = await _recv(stream)
        backend = self.backend
        app = backend.apps.get((backend.env_name(req.environment_name), req.app_name))
        candidates = [
            sb
            for sb in backend.sandboxes.values()
            if app is not None
            and sb.app_id == app.app_id
            and sb.name == req.sandbox_name
            and sb.version == version
        ]
        running = [sb for sb in candidates if sb.result is None]
        chosen = running or (candidates if req.include_terminated else [])
        if not chosen:
            raise GRPCError(
                Status.NOT_FOUND,
                f"Sandbox with name '{req.sandbox_name}' not found in App '{req.app_name}'",
            )
        sb = max(chosen, key=lambda s: s.created_at)
        resp = api_pb2.SandboxGetFromNameResponse(
            sandbox_id=sb.sandbox_id, metadata=api_pb2.SandboxHandleMetadata(app_id=sb.app_id)
        )
        if sb.result is not None:
            resp.metadata.result.CopyFrom(sb.result)
        await stream.send_message(resp)

    # -- functions (phase 2) ---------------------------------------------------------------

    def _functions(self) -> Functions:
        functions = self.backend.functions
        assert functions is not None
        return functions

    async def FunctionGet(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionGetRequest = await _recv(stream)
        functions = self._functions()
        fn = functions.lookup(
            self.backend.env_name(req.environment_name), req.app_name, req.object_tag
        )
        await stream.send_message(
            api_pb2.FunctionGetResponse(
                function_id=fn.function_id,
                handle_metadata=functions.handle_metadata(fn),
                function=functions.function_data(fn),
            )
        )

    async def FunctionMap(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionMapRequest = await _recv(stream)
        functions = self._functions()
        fn = functions.by_id.get(req.function_id)
        if fn is None:
            raise GRPCError(Status.NOT_FOUND, f"Function {req.function_id} not found")
        if (
            req.function_call_type != api_pb2.FUNCTION_CALL_TYPE_UNARY
            or len(req.pipelined_inputs) != 1
        ):
            raise GRPCError(
                Status.UNIMPLEMENTED,
                "only single-input calls (.remote, .spawn) are implemented by the local Modal server",
            )
        call = functions.start_call(fn, req.pipelined_inputs[0], req.function_call_invocation_type)
        await stream.send_message(
            api_pb2.FunctionMapResponse(
                function_call_id=call.function_call_id,
                function_call_jwt=call.input_jwt,
                pipelined_inputs=[
                    api_pb2.FunctionPutInputsResponseItem(
                        idx=0, input_id=call.input_id, input_jwt=call.input_jwt
                    )
                ],
            )
        )

    async def FunctionGetOutputs(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionGetOutputsRequest = await _recv(stream)
        await stream.send_message(await self._functions().outputs(req))

    async def FunctionCallFromId(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionCallFromIdRequest = await _recv(stream)
        call = self._functions().call(req.function_call_id)
        await stream.send_message(
            api_pb2.FunctionCallFromIdResponse(
                function_call_id=call.function_call_id,
                num_inputs=1,
                metadata=api_pb2.FunctionCallHandleMetadata(
                    app_id=call.function.app_id, function_id=call.function.function_id
                ),
            )
        )

    async def FunctionGetCurrentStats(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionGetCurrentStatsRequest = await _recv(stream)
        functions = self._functions()
        fn = functions.by_id.get(req.function_id)
        if fn is None:
            raise GRPCError(Status.NOT_FOUND, f"Function {req.function_id} not found")
        await stream.send_message(functions.current_stats(fn))

    async def FunctionCallCancel(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.FunctionCallCancelRequest = await _recv(stream)
        self._functions().cancel(req.function_call_id)
        await stream.send_message(empty_pb2.Empty())

    # -- sandboxes: V1 only --------------------------------------------------------------

    async def SandboxCreate(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxCreateRequest = await _recv(stream)
        sb = self.backend.create_sandbox(
            app_id=req.app_id,
            definition=req.definition,
            secret_sources=[],
            tags=list(req.tags),
            version=1,
        )
        await stream.send_message(
            api_pb2.SandboxCreateResponse(
                sandbox_id=sb.sandbox_id,
                metadata=api_pb2.SandboxHandleMetadata(app_id=sb.app_id),
            )
        )

    async def SandboxStdinWrite(self, stream: Stream[Any, Any]) -> None:
        req: api_pb2.SandboxStdinWriteRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        if len(req.input) > self.backend.settings.max_stdin_message_bytes:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "stdin message too large")
        if req.index <= sb.v1_stdin_index:  # a retry of a write already applied
            await stream.send_message(api_pb2.SandboxStdinWriteResponse())
            return
        sb.v1_stdin_index = req.index
        error = await sb.process.write_stdin(sb.process.stdin_offset, req.input, req.eof)
        if error is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, error)
        await stream.send_message(api_pb2.SandboxStdinWriteResponse())

    async def SandboxGetLogs(self, stream: Stream[Any, Any]) -> None:
        """V1 stdout/stderr: text batches; ``entry_id`` is the byte offset decoded so far."""
        req: api_pb2.SandboxGetLogsRequest = await _recv(stream)
        sb = self.backend.sandbox(req.sandbox_id)
        if req.file_descriptor == api_pb2.FILE_DESCRIPTOR_STDERR:
            buffer = sb.process.stderr
        else:
            buffer = sb.process.stdout
        offset = int(req.last_entry_id or 0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + min(req.timeout or MAX_LONG_POLL_S, MAX_LONG_POLL_S)
        chunk = self.backend.settings.stdio_chunk_bytes
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                got = await asyncio.wait_for(buffer.read(offset, chunk), remaining)
            except TimeoutError:
                return
            if got is None:
                tail = decoder.decode(b"", final=True)
                items = [api_pb2.TaskLogs(data=tail, file_descriptor=req.file_descriptor)]
                await stream.send_message(
                    api_pb2.TaskLogsBatch(
                        items=items if tail else [], entry_id=str(offset), eof=True
                    )
                )
                return
            start, data = got
            text = decoder.decode(data)
            offset = start + len(data)
            pending = len(decoder.getstate()[0])
            await stream.send_message(
                api_pb2.TaskLogsBatch(
                    items=[api_pb2.TaskLogs(data=text, file_descriptor=req.file_descriptor)]
                    if text
                    else [],
                    entry_id=str(offset - pending),
                )
            )


def _builder_version() -> str:
    from .backend import IMAGE_BUILDER_VERSION

    return IMAGE_BUILDER_VERSION


def _image_metadata() -> api_pb2.ImageMetadata:
    return api_pb2.ImageMetadata(
        python_version_info="Python 3.11.0 (local)", image_builder_version=_builder_version()
    )


def _record_unimplemented(self: ControlPlane, name: str) -> None:
    self.backend.unimplemented[f"ModalClient/{name}"] += 1


fill_unimplemented(ControlPlane, service="ModalClient", record=_record_unimplemented)
