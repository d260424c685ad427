"""The state behind both services: apps, images, secrets, sandboxes, faults and counts.

Everything here lives on the server's event loop; :class:`~.server.LocalModal`
marshals calls from other threads onto it, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import secrets
import string
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from grpclib import GRPCError, Status
from modal_proto import api_pb2

from ._grpc import jwt_claims, make_jwt
from .sandboxes import LocalSandbox

if TYPE_CHECKING:
    from .functions import Functions, FunctionStatistics

__all__ = ["Backend", "LiveSandbox", "Settings", "Statistics"]

DEFAULT_ENVIRONMENT = "main"
IMAGE_BUILDER_VERSION = "2025.06"
#: The SDK buffers at most this much stdin per drain() (io_streams.TASK_COMMAND_ROUTER_MAX_BUFFER_SIZE).
SDK_STDIN_BUFFER_LIMIT = 16 * 1024 * 1024
#: Sandboxes per SandboxList page.
LIST_PAGE_SIZE = 100
#: How long SandboxTerminate waits for the processes to be gone before answering.
TERMINATE_WAIT_S = 10.0

_V1_ALPHABET = string.ascii_letters + string.digits


@dataclass
class Settings:
    """Runtime-tunable behaviour; see :meth:`LocalModal.configure`."""

    #: Sandbox creations admitted per second (token bucket); None: unlimited.
    creation_rate: float | None = None
    #: Bucket size; None: max(1, creation_rate).
    creation_burst: float | None = None
    #: Sandboxes running (created and not finished) at once; None: unlimited.
    max_running: int | None = None
    #: Probability that a creation is refused at random (RESOURCE_EXHAUSTED).
    refusal_probability: float = 0.0
    #: Seconds between SandboxCreate and the process starting (cold start).
    start_delay: float = 0.0
    #: Seconds an image "build" takes (first use of an image definition).
    image_build_delay: float = 0.0
    #: If set, image builds fail with this message (the SDK raises ImageBuildError).
    image_build_error: str | None = None
    #: Upper bound on every sandbox's lifetime in seconds (its ``timeout`` otherwise).
    lifetime_cap: float | None = None
    #: Seconds between SIGTERM and SIGKILL on terminate (0: SIGKILL at once).
    terminate_grace: float = 0.0
    #: Attach a retry-after hint (RPCRetryPolicy) to rate-limit refusals.
    rate_limit_retry_after: bool = True
    #: Attach a retry-after hint to refusals for too many running sandboxes.
    max_running_retry_after: bool = False
    #: The hint's delay for max_running refusals, in seconds.
    max_running_retry_after_s: float = 1.0
    #: Largest stdout/stderr chunk sent in one SandboxStdioReadV2/TaskExecStdioRead message.
    stdio_chunk_bytes: int = 64 * 1024
    #: Output kept per stream (the router keeps "only the most recent portion"); None: all.
    output_retention_bytes: int | None = None
    #: Largest stdin ``data`` accepted in one write message (RESOURCE_EXHAUSTED above it).
    max_stdin_message_bytes: int = SDK_STDIN_BUFFER_LIMIT
    #: Seconds a finished function call's output is kept (then it has expired, as in Modal);
    #: None: for ever.
    function_output_retention: float | None = None


@dataclass(frozen=True)
class LiveSandbox:
    """A sandbox that has not finished, as :meth:`LocalModal.statistics` reports it."""

    sandbox_id: str
    app_id: str
    #: "starting" (cold start) or "running".
    state: str
    tags: Mapping[str, str]
    name: str | None
    pid: int | None
    command: tuple[str, ...]
    timeout_s: float
    milli_cpu: int
    memory_mb: int
    #: Environment variables from secrets and ``env=`` (not the inherited ones).
    injected_env: Mapping[str, str]


@dataclass(frozen=True)
class Statistics:
    """Counts since the server started, and what is running now."""

    #: Sandbox creations accepted.
    creates: int
    #: Creations refused, by reason: "rate_limit", "max_running", "random", "injected".
    creates_refused: Mapping[str, int]
    #: SandboxTerminate calls, and how many of them stopped a sandbox still running.
    terminate_calls: int
    terminates: int
    #: Sandboxes created and not finished (starting or running).
    running: int
    #: The most that were running at once.
    max_running: int
    #: Entrypoint processes alive right now.
    processes_alive: int
    #: Sandboxes finished, by how: "success", "failure", "timeout", "terminated".
    exits: Mapping[str, int]
    #: Sandboxes killed at their lifetime (== exits["timeout"]).
    lifetime_exits: int
    live: tuple[LiveSandbox, ...]
    #: Sandbox.exec processes started, and alive now.
    execs_started: int
    execs_running: int
    #: Image builds (first use of an image definition).
    image_builds: int
    #: Requests per method ("ModalClient/SandboxCreateV2", "TaskCommandRouter/..."), all services.
    rpcs: Mapping[str, int]
    #: Requests whose handler was cancelled (client went away, deadline, reset).
    rpcs_cancelled: Mapping[str, int]
    #: Requests for methods the server does not implement.
    unimplemented: Mapping[str, int]
    #: HTTP/2 connections accepted per service ("api", "router").
    connections: Mapping[str, int]
    #: Modal Functions (phase 2).
    functions: FunctionStatistics | None = None

    @property
    def creates_refused_total(self) -> int:
        return sum(self.creates_refused.values())

    @property
    def finished(self) -> int:
        return sum(self.exits.values())

    @property
    def live_ids(self) -> tuple[str, ...]:
        return tuple(sb.sandbox_id for sb in self.live)


@dataclass
class _Fault:
    status: Status
    message: str
    retry_after: float | None = None


@dataclass
class _App:
    app_id: str
    name: str
    environment_name: str


@dataclass
class _Secret:
    secret_id: str
    name: str | None
    environment_name: str
    env: dict[str, str]


@dataclass
class _Image:
    image_id: str
    built: asyncio.Event = field(default_factory=asyncio.Event)
    result: api_pb2.GenericResult | None = None


class Backend:
    """Apps, images, secrets, sandboxes, faults and counters of one local Modal."""

    def __init__(
        self,
        *,
        token_id: str,
        token_secret: str,
        settings: Settings,
        secrets_by_name: Mapping[str, Mapping[str, str]],
        seed: int | None,
    ) -> None:
        self.token_id = token_id
        self.token_secret = token_secret
        self.settings = settings
        self.router_url = ""
        self._rng = random.Random(seed)
        self._tokens = self._burst()
        self._refilled_at = time.monotonic()
        self.apps: dict[tuple[str, str], _App] = {}
        self.apps_by_id: dict[str, _App] = {}
        self.images: dict[str, _Image] = {}
        self.images_by_key: dict[str, _Image] = {}
        self.secrets: dict[str, _Secret] = {}
        self.secrets_by_name: dict[tuple[str, str], _Secret] = {}
        for name, env in secrets_by_name.items():
            self.add_secret(name, env)
        self.sandboxes: dict[str, LocalSandbox] = {}
        #: The sandboxes not finished (kept apart: scanning every sandbox ever made on each
        #: creation made a long benchmark's creations slower and slower).
        self._live: dict[str, LocalSandbox] = {}
        self.sandboxes_by_task: dict[str, LocalSandbox] = {}
        self.router_tokens: set[str] = set()
        self._last_created_at = 0.0
        # counters
        self.creates = 0
        self.creates_refused: Counter[str] = Counter()
        self.terminate_calls = 0
        self.terminates = 0
        self.max_running_seen = 0
        self.exits: Counter[str] = Counter()
        self.execs_started = 0
        self.image_builds = 0
        self.rpcs: Counter[str] = Counter()
        self.rpcs_cancelled: Counter[str] = Counter()
        self.unimplemented: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()
        # faults
        self.faults: dict[str, deque[_Fault]] = {}
        self.flowing: dict[str, asyncio.Event] = {"api": asyncio.Event(), "router": asyncio.Event()}
        for event in self.flowing.values():
            event.set()
        self._idle_changed = asyncio.Event()
        from .functions import Functions

        self.functions: Functions | None = Functions(
            self.new_id,
            output_retention=lambda: self.settings.function_output_retention,
            on_idle_changed=self.notify_idle_changed,
        )

    # -- settings ----------------------------------------------------------------------

    def configure(self, changes: Mapping[str, Any]) -> None:
        names = {f.name for f in fields(Settings)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        was_limited = self.settings.creation_rate is not None
        self._refill()
        self.settings = replace(self.settings, **changes)
        # A new rate keeps the tokens left (up to the new burst); a new limit starts full.
        self._tokens = min(self._tokens, self._burst()) if was_limited else self._burst()
        self._refilled_at = time.monotonic()

    def seed(self, seed: int | None) -> None:
        self._rng.seed(seed)

    def _refill(self) -> None:
        now = time.monotonic()
        rate = self.settings.creation_rate
        if rate is not None:
            self._tokens = min(self._burst(), self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now

    def _burst(self) -> float:
        s = self.settings
        if s.creation_burst is not None:
            return float(s.creation_burst)
        return max(1.0, float(s.creation_rate or 1.0))

    # -- ids and tokens ----------------------------------------------------------------

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(9)}"

    @staticmethod
    def new_v1_sandbox_id() -> str:
        return "sb-" + "".join(secrets.choice(_V1_ALPHABET) for _ in range(22))

    def client_token(self) -> str:
        return make_jwt({"sub": self.token_id, "exp": int(time.time()) + 3600})

    def router_token(self, task_id: str) -> str:
        token = make_jwt(
            {"task_id": task_id, "exp": int(time.time()) + 3600, "n": secrets.token_hex(4)}
        )
        self.router_tokens.add(token)
        return token

    def check_router_token(self, metadata: Mapping[str, Any]) -> None:
        auth = str(metadata.get("authorization", ""))
        token = auth.removeprefix("Bearer ")
        claims = jwt_claims(token)
        if token not in self.router_tokens or claims is None:
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or missing task command router token")
        if float(claims.get("exp", 0)) < time.time():
            raise GRPCError(Status.UNAUTHENTICATED, "task command router token expired")

    def check_credentials(self, metadata: Mapping[str, Any]) -> None:
        token_id = metadata.get("x-modal-token-id")
        token_secret = metadata.get("x-modal-token-secret")
        if token_id is None and token_secret is None:
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing. Could not authenticate client.")
        if token_id != self.token_id or token_secret != self.token_secret:
            raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret")

    # -- faults ------------------------------------------------------------------------

    def add_fault(self, method: str, fault: _Fault, count: int) -> None:
        self.faults.setdefault(method, deque()).extend([fault] * count)

    def take_fault(self, method: str) -> _Fault | None:
        queue = self.faults.get(method)
        if not queue:
            return None
        fault = queue.popleft()
        if not queue:
            del self.faults[method]
        return fault

    @staticmethod
    def raise_fault(fault: _Fault) -> None:
        details = None
        if fault.retry_after is not None:
            details = [api_pb2.RPCRetryPolicy(retry_after_secs=fault.retry_after)]
        raise GRPCError(fault.status, fault.message, details)

    # -- apps, environments, images, secrets --------------------------------------------

    @staticmethod
    def env_name(name: str) -> str:
        return name or DEFAULT_ENVIRONMENT

    def app_get_or_create(self, name: str, environment_name: str, create: bool) -> _App:
        env = self.env_name(environment_name)
        app = self.apps.get((env, name))
        if app is None:
            if not create:
                raise GRPCError(Status.NOT_FOUND, f"App '{name}' not found in environment '{env}'")
            app = _App(self.new_id("ap"), name, env)
            self.apps[(env, name)] = app
            self.apps_by_id[app.app_id] = app
        return app

    def image_get_or_create(self, image: api_pb2.Image) -> _Image:
        key = hashlib.sha256(image.SerializeToString(deterministic=True)).hexdigest()
        existing = self.images_by_key.get(key)
        if existing is not None:
            return existing
        img = _Image(self.new_id("im"))
        self.images_by_key[key] = img
        self.images[img.image_id] = img
        self.image_builds += 1
        asyncio.get_running_loop().create_task(self._build(img))
        return img

    async def _build(self, img: _Image) -> None:
        if self.settings.image_build_delay > 0:
            await asyncio.sleep(self.settings.image_build_delay)
        error = self.settings.image_build_error
        if error is None:
            img.result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
        else:
            img.result = api_pb2.GenericResult(
                status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, exception=error
            )
        img.built.set()

    def add_secret(
        self, name: str | None, env: Mapping[str, str], environment_name: str = ""
    ) -> _Secret:
        envname = self.env_name(environment_name)
        secret = _Secret(self.new_id("st"), name, envname, dict(env))
        self.secrets[secret.secret_id] = secret
        if name is not None:
            self.secrets_by_name[(envname, name)] = secret
        return secret

    def secret_env(self, secret_id: str) -> dict[str, str]:
        secret = self.secrets.get(secret_id)
        if secret is None:
            raise GRPCError(Status.NOT_FOUND, f"Secret {secret_id} not found")
        return secret.env

    # -- sandboxes -----------------------------------------------------------------------

    def running(self) -> list[LocalSandbox]:
        return [sb for sb in self._live.values() if sb.result is None]

    def admit_creation(self) -> None:
        """Raise RESOURCE_EXHAUSTED if this creation is refused; else take a rate token."""
        s = self.settings
        if s.refusal_probability > 0 and self._rng.random() < s.refusal_probability:
            self.creates_refused["random"] += 1
            raise GRPCError(Status.RESOURCE_EXHAUSTED, "Sandbox creation refused (injected)")
        if s.max_running is not None and len(self.running()) >= s.max_running:
            self.creates_refused["max_running"] += 1
            details = None
            if s.max_running_retry_after:
                details = [api_pb2.RPCRetryPolicy(retry_after_secs=s.max_running_retry_after_s)]
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"Workspace limit of {s.max_running} running sandboxes reached",
                details,
            )
        if s.creation_rate is not None:
            self._refill()
            if self._tokens < 1.0:
                self.creates_refused["rate_limit"] += 1
                wait = (1.0 - self._tokens) / s.creation_rate if s.creation_rate > 0 else 1.0
                details = None
                if s.rate_limit_retry_after:
                    details = [api_pb2.RPCRetryPolicy(retry_after_secs=wait)]
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"Sandbox creation rate limit exceeded ({s.creation_rate:g}/s); "
                    f"retry in {wait:.2f}s",
                    details,
                )
            self._tokens -= 1.0

    def sandbox_env(
        self,
        definition: api_pb2.Sandbox,
        secret_sources: Sequence[api_pb2.SecretSource],
        extra: Mapping[str, str],
    ) -> dict[str, str]:
        """Environment variables a sandbox gets from its secrets (in order) and ``env=``."""
        env: dict[str, str] = {}
        seen: set[str] = set()
        for secret_id in definition.secret_ids:
            env.update(self.secret_env(secret_id))
            seen.add(secret_id)
        for source in secret_sources:
            which = source.WhichOneof("source")
            if which == "secret_id" and source.secret_id not in seen:
                env.update(self.secret_env(source.secret_id))
                seen.add(source.secret_id)
            elif which == "env":
                env.update(source.env.contents)
        if definition.HasField("environment_variables"):
            env.update(definition.environment_variables.contents)
        env.update(extra)
        return env

    def create_sandbox(
        self,
        *,
        app_id: str,
        definition: api_pb2.Sandbox,
        secret_sources: Sequence[api_pb2.SecretSource],
        tags: Sequence[api_pb2.SandboxTag],
        version: int,
    ) -> LocalSandbox:
        app = self.apps_by_id.get(app_id)
        if app is None:
            raise GRPCError(Status.NOT_FOUND, f"App {app_id} not found")
        name = definition.name if definition.HasField("name") else None
        if name is not None and any(
            sb.name == name and sb.app_id == app_id for sb in self.running()
        ):
            raise GRPCError(
                Status.ALREADY_EXISTS, f"Sandbox with name '{name}' already exists in the App"
            )
        injected = self.sandbox_env(definition, secret_sources, {})
        self.admit_creation()
        if version == 1:
            sandbox_id, task_id = self.new_v1_sandbox_id(), self.new_id("ta")
        else:
            sandbox_id, task_id = self.new_id("sb"), self.new_id("ta") + "V"
        base = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        env = {
            **base,
            **injected,
            "MODAL_SANDBOX_ID": sandbox_id,
            "MODAL_TASK_ID": task_id,
        }
        workdir = definition.workdir if definition.HasField("workdir") else None
        cwd = workdir if workdir and os.path.isdir(workdir) else None
        argv = list(definition.entrypoint_args) or ["sleep", "infinity"]
        timeout = float(definition.timeout_secs or 300)
        if self.settings.lifetime_cap is not None:
            timeout = min(timeout, self.settings.lifetime_cap)
        created_at = max(time.time(), self._last_created_at + 1e-6)
        self._last_created_at = created_at
        sb = LocalSandbox(
            sandbox_id=sandbox_id,
            task_id=task_id,
            app_id=app_id,
            environment_name=app.environment_name,
            argv=argv,
            env=env,
            cwd=cwd,
            timeout=timeout,
            start_delay=self.settings.start_delay,
            terminate_grace=self.settings.terminate_grace,
            created_at=created_at,
            name=name,
            tags={t.tag_name: t.tag_value for t in tags},
            image_id=definition.image_id,
            definition=definition,
            retention=self.settings.output_retention_bytes,
            version=version,
            on_finished=self._sandbox_finished,
        )
        sb.injected_env = injected
        self.sandboxes[sandbox_id] = sb
        self._live[sandbox_id] = sb
        self.sandboxes_by_task[task_id] = sb
        self.creates += 1
        self.max_running_seen = max(self.max_running_seen, len(self.running()))
        sb.start()
        return sb

    def _sandbox_finished(self, sb: LocalSandbox) -> None:
        assert sb.result is not None
        self._live.pop(sb.sandbox_id, None)
        status = sb.result.status
        G = api_pb2.GenericResult
        label = {
            G.GENERIC_STATUS_SUCCESS: "success",
            G.GENERIC_STATUS_FAILURE: "failure",
            G.GENERIC_STATUS_TIMEOUT: "timeout",
            G.GENERIC_STATUS_TERMINATED: "terminated",
        }.get(status, "other")
        self.exits[label] += 1
        self._idle_changed.set()
        self._idle_changed = asyncio.Event()

    def sandbox(self, sandbox_id: str) -> LocalSandbox:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found")
        return sb

    def sandbox_by_task(self, task_id: str) -> LocalSandbox:
        sb = self.sandboxes_by_task.get(task_id)
        if sb is None:
            raise GRPCError(Status.NOT_FOUND, f"Task {task_id} not found")
        return sb

    async def terminate(self, sb: LocalSandbox) -> api_pb2.GenericResult | None:
        """Stop ``sb``; the result it already had if it had finished before."""
        self.terminate_calls += 1
        existing = sb.result
        if sb.request_terminate():
            self.terminates += 1
        await sb.wait_finished(TERMINATE_WAIT_S)
        return existing

    def list_sandboxes(
        self, req: api_pb2.SandboxListRequest, version: int | None
    ) -> list[LocalSandbox]:
        wanted = {t.tag_name: t.tag_value for t in req.tags}
        env = self.env_name(req.environment_name) if req.environment_name else None
        out = []
        for sb in (self.sandboxes if req.include_finished else self._live).values():
            if version is not None and sb.version != version:
                continue
            if not req.include_finished and sb.result is not None:
                continue
            if req.app_id and sb.app_id != req.app_id:
                continue
            if env is not None and not req.app_id and sb.environment_name != env:
                continue
            if req.before_timestamp and sb.created_at >= req.before_timestamp:
                continue
            if any(sb.tags.get(k) != v for k, v in wanted.items()):
                continue
            out.append(sb)
        out.sort(key=lambda sb: sb.created_at, reverse=True)
        return out[:LIST_PAGE_SIZE]

    # -- statistics and shutdown -------------------------------------------------------

    def statistics(self) -> Statistics:
        live = []
        for sb in self.running():
            res = sb.definition.resources
            live.append(
                LiveSandbox(
                    sandbox_id=sb.sandbox_id,
                    app_id=sb.app_id,
                    state=sb.state,
                    tags=dict(sb.tags),
                    name=sb.name,
                    pid=sb.process.pid,
                    command=tuple(sb.process.argv),
                    timeout_s=sb.timeout,
                    milli_cpu=res.milli_cpu,
                    memory_mb=res.memory_mb,
                    injected_env=dict(sb.injected_env),
                )
            )
        execs_running = sum(
            1 for sb in self.sandboxes.values() for ex in sb.execs.values() if ex.process.alive
        )
        return Statistics(
            creates=self.creates,
            creates_refused=dict(self.creates_refused),
            terminate_calls=self.terminate_calls,
            terminates=self.terminates,
            running=len(live),
            max_running=self.max_running_seen,
            processes_alive=sum(1 for sb in self.sandboxes.values() if sb.process.alive),
            exits=dict(self.exits),
            lifetime_exits=self.exits.get("timeout", 0),
            live=tuple(live),
            execs_started=self.execs_started,
            execs_running=execs_running,
            image_builds=self.image_builds,
            rpcs=dict(self.rpcs),
            rpcs_cancelled=dict(self.rpcs_cancelled),
            unimplemented=dict(self.unimplemented),
            connections=dict(self.connections),
            functions=self.functions.statistics() if self.functions is not None else None,
        )

    async def wait_idle(self, seconds: float | None) -> bool:
        """True once no sandbox is running (and no function call, if any), False after ``seconds``."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while True:
            busy = bool(self.running()) or any(
                ex.process.alive for sb in self.sandboxes.values() for ex in sb.execs.values()
            )
            if self.functions is not None and self.functions.busy():
                busy = True
            if not busy:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            changed = self._idle_changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining or 0.05, 0.05))
            except TimeoutError:
                pass

    def notify_idle_changed(self) -> None:
        self._idle_changed.set()
        self._idle_changed = asyncio.Event()

    async def shutdown(self) -> None:
        """Stop every sandbox (and exec, and function call), killing their process groups."""
        if self.functions is not None:
            await self.functions.shutdown()
        tasks = []
        for sb in self.sandboxes.values():
            sb.request_terminate("shutdown")
            if sb.task is not None and not sb.task.done():
                tasks.append(sb.task)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for sb in self.sandboxes.values():
            sb.kill_now()
