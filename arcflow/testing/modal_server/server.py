"""LocalModal: the two gRPC services on 127.0.0.1, in a thread with an event loop of its own."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpclib.events
from grpclib import Status

from ._grpc import ListeningServer, bind
from .backend import Backend, Settings, Statistics, _Fault
from .router import TaskCommandRouter
from .servicer import ControlPlane

__all__ = ["LocalModal"]

T = TypeVar("T")

_UNSET: Any = object()

#: Methods whose refusal counts as a refused sandbox creation.
_CREATE_METHODS = ("ModalClient/SandboxCreateV2", "ModalClient/SandboxCreate")


class LocalModal:
    """A local stand-in for Modal's control plane and task command router, for the real SDK.

    ::

        with LocalModal(creation_rate=30) as modal_env, modal_env.environ():
            app = modal.App.lookup("x", create_if_missing=True)
            sb = modal.Sandbox.create("python", "-c", "print(1)", app=app)
            ...
            assert modal_env.wait_idle(5)

    Each sandbox's command runs as a local subprocess in its own session.  The
    server runs in a daemon thread with its own asyncio loop, so it serves sync,
    asyncio, trio and trio-asyncio tests alike; every method here is thread-safe
    (it runs on that loop).  Behaviour is tuned at runtime with :meth:`configure`
    (the keyword arguments of the constructor are the same settings).
    """

    def __init__(
        self,
        *,
        creation_rate: float | None = None,
        creation_burst: float | None = None,
        max_running: int | None = None,
        refusal_probability: float = 0.0,
        seed: int | None = 0,
        start_delay: float = 0.0,
        image_build_delay: float = 0.0,
        lifetime_cap: float | None = None,
        terminate_grace: float = 0.0,
        rate_limit_retry_after: bool = True,
        max_concurrent_streams: int = 100,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        token_id: str = "ak-arcflow-local",
        token_secret: str = "as-arcflow-local",
        environment: str = "main",
        **settings: Any,
    ) -> None:
        self._settings = Settings(
            creation_rate=creation_rate,
            creation_burst=creation_burst,
            max_running=max_running,
            refusal_probability=refusal_probability,
            start_delay=start_delay,
            image_build_delay=image_build_delay,
            lifetime_cap=lifetime_cap,
            terminate_grace=terminate_grace,
            rate_limit_retry_after=rate_limit_retry_after,
            **settings,
        )
        self._seed = seed
        self._secrets = {k: dict(v) for k, v in (secrets or {}).items()}
        self.token_id = token_id
        self.token_secret = token_secret
        self.environment = environment
        self.max_concurrent_streams = max_concurrent_streams
        self.port = 0
        self.router_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._backend: Backend | None = None
        self._servers: dict[str, ListeningServer | None] = {"api": None, "router": None}
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._thread else "not started")
        return f"<LocalModal {self.url} router {self.router_url} {state}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalModal:
        """Start the server thread and listen on two free ports of 127.0.0.1."""
        if self._thread is not None:
            raise RuntimeError("LocalModal already started")
        self._thread = threading.Thread(target=self._thread_main, name="local-modal", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise RuntimeError("LocalModal failed to start") from self._startup_error
        # A server left open must not leave process groups behind when the interpreter exits.
        atexit.register(self.close)
        return self

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _startup(self) -> None:
        self._backend = Backend(
            token_id=self.token_id,
            token_secret=self.token_secret,
            settings=self._settings,
            secrets_by_name=self._secrets,
            seed=self._seed,
        )
        api_sock, router_sock = bind(), bind()
        self.port = api_sock.getsockname()[1]
        self.router_port = router_sock.getsockname()[1]
        self._backend.router_url = self.router_url
        await self._listen("api", api_sock)
        await self._listen("router", router_sock)

    async def _listen(self, service: str, sock: Any) -> None:
        backend = self._require_backend()
        # Both classes are made concrete at import (fill_unimplemented), which mypy cannot see.
        handler: Any = (
            ControlPlane(backend)  # type: ignore[abstract]
            if service == "api"
            else TaskCommandRouter(backend)  # type: ignore[abstract]
        )

        def connected() -> None:
            backend.connections[service] += 1

        server = ListeningServer(
            [handler], max_concurrent_streams=self.max_concurrent_streams, on_connection=connected
        )
        grpclib.events.listen(server, grpclib.events.RecvRequest, self._request_hook(service))
        await server.listen(sock)
        self._servers[service] = server

    def _request_hook(self, service: str) -> Callable[[grpclib.events.RecvRequest], Any]:
        backend = self._require_backend()

        async def on_request(event: grpclib.events.RecvRequest) -> None:
            parts = event.method_name.rsplit("/", 2)
            key = f"{parts[-2].rsplit('.', 1)[-1]}/{parts[-1]}"
            original = event.method_func

            async def handle(stream: Any) -> None:
                backend.rpcs[key] += 1
                try:
                    await backend.flowing[service].wait()
                    if service == "api":
                        backend.check_credentials(stream.metadata)
                    else:
                        backend.check_router_token(stream.metadata)
                    fault = backend.take_fault(key)
                    if fault is not None:
                        if key in _CREATE_METHODS:
                            backend.creates_refused["injected"] += 1
                        backend.raise_fault(fault)
                    await original(stream)
                except asyncio.CancelledError:
                    backend.rpcs_cancelled[key] += 1
                    raise

            event.method_func = handle

        return on_request

    def close(self) -> None:
        """Kill every sandbox's process group, stop listening, stop the thread."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        atexit.unregister(self.close)
        loop = self._loop
        if loop is not None and loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=20)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)
        _forget_modal_client(self.url)

    async def _shutdown(self) -> None:
        backend = self._require_backend()
        for event in backend.flowing.values():
            event.set()
        await backend.shutdown()
        for service in ("api", "router"):
            await self._stop_listening(service)

    async def _stop_listening(self, service: str) -> None:
        server = self._servers[service]
        if server is None:
            return
        self._servers[service] = None
        server.close()
        server.reset_connections()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    def __enter__(self) -> LocalModal:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> LocalModal:
        await _to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _to_thread(self.close)

    # -- where it is -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The control plane, for ``MODAL_SERVER_URL``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def router_url(self) -> str:
        """The task command router (the SDK learns it from SandboxCreateV2's response)."""
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the modal SDK at this server."""
        return {
            "MODAL_SERVER_URL": self.url,
            "MODAL_TOKEN_ID": self.token_id,
            "MODAL_TOKEN_SECRET": self.token_secret,
            "MODAL_ENVIRONMENT": self.environment,
        }

    @contextlib.contextmanager
    def environ(self) -> Iterator[dict[str, str]]:
        """Set :attr:`env` in ``os.environ`` (restored after), dropping the SDK's cached client."""
        names = [*self.env, "MODAL_PROFILE", "MODAL_OAUTH_REFRESH_TOKEN"]
        saved = {name: os.environ.get(name) for name in names}
        for name in ("MODAL_PROFILE", "MODAL_OAUTH_REFRESH_TOKEN"):
            os.environ.pop(name, None)
        os.environ.update(self.env)
        _forget_modal_client(None)
        try:
            yield self.env
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            _forget_modal_client(self.url)

    # -- running things on the server loop ---------------------------------------------------

    def _require_backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("LocalModal is not started")
        return self._backend

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        result: T = self._run(run())
        return result

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        loop = self._loop
        if loop is None or not loop.is_running():
            coro.close()
            raise RuntimeError("LocalModal is not running")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("LocalModal methods cannot be called from its own event loop")
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    # -- observing ---------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """Counts and the live sandboxes, as of now."""
        return self._call(lambda: self._require_backend().statistics())

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no sandbox (exec, function call) is running; False if ``timeout`` passes."""
        result: bool = self._run(self._require_backend().wait_idle(timeout), timeout + 5)
        return result

    def left_running(self) -> str:
        """What is still running, for a message: sandboxes, execs and function calls ("nothing")."""
        stats = self.statistics()
        parts = []
        if stats.live:
            parts.append("sandboxes " + ", ".join(stats.live_ids))
        if stats.execs_running:
            parts.append(f"{stats.execs_running} exec process(es)")
        if stats.functions is not None and stats.functions.live_calls:
            parts.append("function calls " + ", ".join(stats.functions.live_calls[:20]))
        return "; ".join(parts) or "nothing"

    async def wait_idle_async(self, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """:meth:`wait_idle` for trio or asyncio code (runs it in a worker thread)."""
        return await _to_thread(self.wait_idle, timeout)

    def sandbox_output(self, sandbox_id: str) -> tuple[bytes, bytes]:
        """``(stdout, stderr)`` of a sandbox's entrypoint as retained by the server."""

        def get() -> tuple[bytes, bytes]:
            sb = self._require_backend().sandbox(sandbox_id)
            return sb.process.stdout.getvalue(), sb.process.stderr.getvalue()

        return self._call(get)

    def sandbox_pid(self, sandbox_id: str) -> int | None:
        """The entrypoint's pid (also its process group id), None before it started."""
        return self._call(lambda: self._require_backend().sandbox(sandbox_id).process.pid)

    # -- tuning ---------------------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change settings at runtime, e.g. ``configure(creation_rate=5, max_running=10)``.

        Settings: creation_rate, creation_burst, max_running, refusal_probability,
        start_delay, image_build_delay, image_build_error, lifetime_cap,
        terminate_grace, rate_limit_retry_after, max_running_retry_after,
        max_running_retry_after_s, stdio_chunk_bytes, output_retention_bytes,
        max_stdin_message_bytes (see :class:`~.backend.Settings`).  New values
        apply to sandboxes created afterwards.
        """
        self._call(lambda: self._require_backend().configure(changes))

    def seed(self, seed: int | None) -> None:
        """Re-seed the random refusals."""
        self._call(lambda: self._require_backend().seed(seed))

    def add_secret(self, name: str, env: Mapping[str, str], environment_name: str = "") -> str:
        """Make ``Secret.from_name(name)`` resolve (to these variables); returns its id."""
        return self._call(
            lambda: self._require_backend().add_secret(name, env, environment_name).secret_id
        )

    def register_function(
        self,
        app_name: str,
        name: str,
        handler: Callable[..., Any] | None = None,
        *,
        command: Sequence[str] | None = None,
        environment_name: str = "",
        cold_start: float = 0.0,
        max_containers: int | None = None,
        max_inputs: int = 1,
        scaledown_window: float = 60.0,
        timeout: float | None = None,
    ) -> str:
        """Serve ``modal.Function.from_name(app_name, name)``; returns the function id.

        ``handler`` is a local callable (sync: run in a thread; async: on the
        server's loop) called with the deserialized arguments; what it returns
        is the call's result, what it raises reaches the caller as Modal
        propagates remote exceptions.  Or ``command``: run per call as a
        subprocess in its own process group, the arguments as JSON on stdin
        (``{"args": [...], "kwargs": {...}}``), its stdout parsed as JSON for
        the result, a non-zero exit a failure (``RemoteError`` for the caller).

        Calls run on at most ``max_containers`` emulated containers of
        ``max_inputs`` concurrent calls each (None: unlimited), each container
        taking ``cold_start`` seconds to start and staying warm for
        ``scaledown_window`` seconds; ``timeout`` fails a call that runs longer
        (FunctionTimeoutError).
        """
        if (handler is None) == (command is None):
            raise TypeError("register_function needs exactly one of handler and command")
        if max_inputs < 1:
            raise ValueError("max_inputs must be at least 1")

        def go() -> str:
            from .functions import RegisteredFunction

            backend = self._require_backend()
            assert backend.functions is not None
            env = backend.env_name(environment_name)
            app = backend.app_get_or_create(app_name, env, True)
            fn = RegisteredFunction(
                app_name=app_name,
                name=name,
                environment_name=env,
                handler=handler,
                command=tuple(command) if command is not None else None,
                cold_start=cold_start,
                max_containers=max_containers,
                max_inputs=max_inputs,
                scaledown_window=scaledown_window,
                timeout=timeout,
            )
            return backend.functions.register(fn, app.app_id).function_id

        return self._call(go)

    def fail_next(
        self,
        method: str,
        status: Status = Status.UNAVAILABLE,
        *,
        count: int = 1,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Make the next ``count`` calls of ``method`` fail with ``status``.

        ``method`` is "Service/Method", e.g. "ModalClient/SandboxCreateV2" or
        "TaskCommandRouter/SandboxStdinWriteV2".  With ``retry_after`` the error
        carries Modal's retry-after hint (RPCRetryPolicy).
        """
        if "/" not in method:
            method = f"ModalClient/{method}"
        fault = _Fault(status, message or f"injected {status.name}", retry_after)
        self._call(lambda: self._require_backend().add_fault(method, fault, count))

    def stall(self, *, router: bool = False) -> None:
        """New control-plane requests (and router ones, with ``router``) hang until :meth:`resume`."""

        def go() -> None:
            backend = self._require_backend()
            backend.flowing["api"].clear()
            if router:
                backend.flowing["router"].clear()

        self._call(go)

    def resume(self) -> None:
        """Answer the stalled requests, and new ones."""

        def go() -> None:
            for event in self._require_backend().flowing.values():
                event.set()

        self._call(go)

    def vanish(self, *, router: bool = False) -> None:
        """The control plane (and the router, with ``router``) goes away: the listening socket
        closes (new connections are refused) and open connections are reset.  Sandboxes keep
        running.  :meth:`come_back` listens again on the same port."""

        async def go() -> None:
            await self._stop_listening("api")
            if router:
                await self._stop_listening("router")

        self._run(go(), 30)

    def come_back(self) -> None:
        """Listen again, on the same ports, after :meth:`vanish`."""

        async def go() -> None:
            if self._servers["api"] is None:
                await self._listen("api", bind(self.port))
            if self._servers["router"] is None:
                await self._listen("router", bind(self.router_port))

        self._run(go(), 30)

    def terminate_all(self) -> int:
        """Terminate every running sandbox (as if by SandboxTerminate); returns how many."""

        async def go() -> int:
            backend = self._require_backend()
            running = backend.running()
            for sb in running:
                sb.request_terminate("terminate_all")
            await asyncio.gather(*(sb.wait_finished(10) for sb in running))
            return len(running)

        result: int = self._run(go(), 30)
        return result


async def _to_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread of whichever async library is running."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        return await trio.to_thread.run_sync(fn, *args)
    return await asyncio.to_thread(fn, *args)


def _forget_modal_client(url: str | None) -> None:
    """Drop the SDK's cached ``Client.from_env()`` client (if it points at ``url``; None: any).

    The SDK caches one client per process; after a LocalModal on another port the
    cached one would talk to a server that is gone.
    """
    try:
        from modal.client import _Client
    except ImportError:  # pragma: no cover - modal is what this package is for
        return
    client = _Client._client_from_env
    if client is not None and (url is None or client.server_url == url):
        _Client._client_from_env = None
