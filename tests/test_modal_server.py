"""arcflow.testing.modal_server: the real modal SDK against the local control plane.

Every test drives the installed ``modal`` package (plain asyncio, ``.aio`` calls)
against a :class:`LocalModal` on 127.0.0.1 whose sandboxes are local
processes; nothing here talks to Modal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psutil
import pytest
from conftest import import_or_skip

modal = import_or_skip("modal")

from modal.exception import (  # noqa: E402
    AuthError,
    ImageBuildError,
    NotFoundError,
    ResourceExhaustedError,
    SandboxTerminatedError,
    SandboxTimeoutError,
    ServiceError,
    UnimplementedError,
)
from modal.exception import ConnectionError as ModalConnectionError  # noqa: E402

from arcflow.testing.modal_server import LocalModal, Status  # noqa: E402

PY = sys.executable
T = TypeVar("T")


@pytest.fixture
def modal_env() -> Iterator[LocalModal]:
    with LocalModal() as env, env.environ():
        yield env
        assert env.wait_idle(10), env.statistics().live


def run(fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30) -> T:
    """Run SDK code in plain asyncio, the way an asyncio application would."""

    async def main() -> T:
        return await asyncio.wait_for(fn(*args), timeout)

    return asyncio.run(main())


async def lookup_app() -> Any:
    return await modal.App.lookup.aio("arcflow-test", create_if_missing=True)


async def create(*argv: str, app: Any = None, **kwargs: Any) -> Any:
    app = app if app is not None else await lookup_app()
    return await modal.Sandbox.create.aio(*argv, app=app, **kwargs)


def gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for init to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


# -- the sandbox round trip -----------------------------------------------------------


def test_stdin_stdout_stderr_wait_returncode(modal_env: LocalModal) -> None:
    """A python -c sandbox gets its stdin, its stdout/stderr reach the client, wait() and returncode report its exit."""
    script = (
        "import sys\n"
        "data = sys.stdin.read()\n"
        "print(data.upper())\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )

    async def go() -> tuple[str, str, int | None, int | None]:
        sb = await create(PY, "-c", script)
        assert sb.object_id.startswith("sb-")
        sb.stdin.write(b"hello ")
        sb.stdin.write("sandbox")
        sb.stdin.write_eof()
        await sb.stdin.drain.aio()
        out = await sb.stdout.read.aio()
        err = "".join([chunk async for chunk in sb.stderr])
        before = sb.returncode
        await sb.wait.aio(raise_on_termination=False)
        return out, err, before, sb.returncode

    out, err, before, code = run(go)
    assert (out, err, code) == ("HELLO SANDBOX\n", "to stderr\n", 3)
    assert before is None
    stats = modal_env.statistics()
    assert stats.creates == 1 and stats.exits == {"failure": 1} and stats.running == 0
    assert stats.rpcs["ModalClient/SandboxCreateV2"] == 1
    assert stats.rpcs["TaskCommandRouter/SandboxStdinWriteV2"] == 1


def test_stdout_iterates_by_line_and_poll_sees_exit(modal_env: LocalModal) -> None:
    """Iterating sandbox.stdout yields whole lines as they are printed; poll() is None while running, the exit code after."""
    script = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.1)\n"

    async def go() -> tuple[list[str], int | None, int | None]:
        sb = await create(PY, "-c", script)
        running = await sb.poll.aio()
        lines = [line async for line in sb.stdout]
        await sb.wait.aio()
        return lines, running, await sb.poll.aio()

    lines, running, finished = run(go)
    assert lines == ["0\n", "1\n", "2\n"]
    assert (running, finished) == (None, 0)


def test_non_utf8_stdout_bytes_reach_the_client_unchanged(modal_env: LocalModal) -> None:
    """Output bytes pass through as bytes: the SDK's strict UTF-8 decoding of sandbox stdout raises on them."""
    script = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n'); sys.stdout.flush()"

    async def go() -> tuple[str, BaseException | None]:
        sb = await create(PY, "-c", script)
        await sb.wait.aio()
        try:
            await sb.stdout.read.aio()
        except UnicodeDecodeError as exc:
            return sb.object_id, exc
        return sb.object_id, None

    sandbox_id, error = run(go)
    assert isinstance(error, UnicodeDecodeError)
    assert error.object[error.start : error.end] == b"\xff"
    assert modal_env.sandbox_output(sandbox_id)[0] == b"ok \xff\xfe end\n"


def test_multibyte_characters_split_across_messages_decode(modal_env: LocalModal) -> None:
    """With one byte per stdout message, UTF-8 characters split across messages still decode (the SDK decodes incrementally)."""
    modal_env.configure(stdio_chunk_bytes=1)
    text = "héllo wörld ✓ 😀\n"

    async def go() -> str:
        sb = await create(PY, "-c", f"print({text.strip()!r})")
        out: str = await sb.stdout.read.aio()
        await sb.wait.aio()
        return out

    assert run(go) == text


def test_stdin_larger_than_16_mib_in_drained_chunks(modal_env: LocalModal) -> None:
    """20 MiB of stdin arrive intact in two drains; one write() of more than 16 MiB is refused by the SDK (BufferError)."""
    payload = os.urandom(20 * 1024 * 1024)
    script = (
        "import hashlib, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "print(len(data), hashlib.sha256(data).hexdigest())\n"
    )

    async def go() -> tuple[str, bool]:
        sb = await create(PY, "-c", script)
        refused = False
        try:
            sb.stdin.write(payload[: 16 * 1024 * 1024 + 1])
        except BufferError:
            refused = True
        sb.stdin.write(payload[: 16 * 1024 * 1024])
        await sb.stdin.drain.aio()
        sb.stdin.write(payload[16 * 1024 * 1024 :])
        sb.stdin.write_eof()
        await sb.stdin.drain.aio()
        out: str = await sb.stdout.read.aio()
        await sb.wait.aio()
        return out, refused

    out, refused = run(go, timeout=60)
    assert out.split() == [str(len(payload)), hashlib.sha256(payload).hexdigest()]
    assert refused


def test_stdin_message_over_the_server_limit_is_resource_exhausted(modal_env: LocalModal) -> None:
    """A stdin message above the router's per-message limit is refused with RESOURCE_EXHAUSTED (ResourceExhaustedError)."""
    modal_env.configure(max_stdin_message_bytes=1024)

    async def go() -> None:
        sb = await create(PY, "-c", "import sys; sys.stdin.read()")
        sb.stdin.write(b"x" * 1024)
        await sb.stdin.drain.aio()
        sb.stdin.write(b"x" * 1025)
        try:
            with pytest.raises(ResourceExhaustedError, match="exceeds the limit of 1024"):
                await sb.stdin.drain.aio()
        finally:
            await sb.terminate.aio()

    run(go)


# -- lifetime, terminate, process groups ---------------------------------------------------


def test_lifetime_kills_the_sandbox_and_wait_raises_timeout(modal_env: LocalModal) -> None:
    """At its timeout the sandbox's processes are killed; wait(raise_on_termination=False) still raises SandboxTimeoutError and returncode is 124."""

    async def go() -> tuple[float, int | None, int | None]:
        sb = await create(PY, "-c", "import time; time.sleep(60)", timeout=1)
        await asyncio.sleep(0.2)
        pid = modal_env.sandbox_pid(sb.object_id)
        started = time.monotonic()
        with pytest.raises(SandboxTimeoutError):
            await sb.wait.aio(raise_on_termination=False)
        return time.monotonic() - started, sb.returncode, pid

    elapsed, code, pid = run(go)
    assert code == 124
    assert 0.5 < elapsed < 3
    assert pid is not None and wait_gone(pid)
    stats = modal_env.statistics()
    assert stats.lifetime_exits == 1 and stats.exits == {"timeout": 1}


def test_terminate_kills_the_whole_process_group(modal_env: LocalModal) -> None:
    """terminate() kills the entrypoint and its grandchild; returncode is 137 and wait() raises SandboxTerminatedError."""
    script = "sleep 60 & echo $!; wait"

    async def go() -> tuple[int, int | None, int | None, bool]:
        sb = await create("sh", "-c", script)
        async for line in sb.stdout:
            grandchild = int(line)
            break
        pid = modal_env.sandbox_pid(sb.object_id)
        await sb.terminate.aio()
        with pytest.raises(SandboxTerminatedError):
            await sb.wait.aio()
        quiet_wait_ok = True
        try:
            await sb.wait.aio(raise_on_termination=False)
        except SandboxTerminatedError:
            quiet_wait_ok = False
        return grandchild, pid, sb.returncode, quiet_wait_ok

    grandchild, pid, code, quiet_wait_ok = run(go)
    assert code == 137 and quiet_wait_ok
    assert pid is not None and gone(pid) and wait_gone(grandchild)
    stats = modal_env.statistics()
    assert (stats.terminate_calls, stats.terminates, stats.exits) == (1, 1, {"terminated": 1})


def test_entrypoint_exit_kills_what_it_left_behind(modal_env: LocalModal) -> None:
    """When the entrypoint exits, the rest of its process group goes too (the container is torn down)."""

    async def go() -> tuple[int, int | None]:
        sb = await create("sh", "-c", "sleep 60 & echo $!")
        out = await sb.stdout.read.aio()
        await sb.wait.aio()
        return int(out), sb.returncode

    orphan, code = run(go)
    assert code == 0
    assert wait_gone(orphan)


def test_server_shutdown_kills_remaining_sandboxes() -> None:
    """Closing the server kills every process group still running."""
    with LocalModal() as env, env.environ():

        async def go() -> str:
            sb = await create("sleep", "60")
            await asyncio.sleep(0.2)
            return str(sb.object_id)

        sandbox_id = run(go)
        pid = env.sandbox_pid(sandbox_id)
        assert env.statistics().running == 1
    assert pid is not None and wait_gone(pid)


def test_cold_start_delays_the_process_not_the_create(modal_env: LocalModal) -> None:
    """With a container start delay, create() returns at once and the process starts after the delay."""
    modal_env.configure(start_delay=0.5)

    async def go() -> tuple[float, float, str]:
        started = time.monotonic()
        sb = await create(PY, "-c", "import time; print(time.time())")
        created = time.monotonic() - started
        state = modal_env.statistics().live[0].state
        out = await sb.stdout.read.aio()
        await sb.wait.aio()
        return created, float(out) - (time.time() - (time.monotonic() - started)), state

    created, printed_after, state = run(go)
    assert created < 0.4 and state == "starting"
    assert printed_after > 0.45


# -- apps, images, secrets, tags, list -------------------------------------------------------


def test_images_secrets_and_resources_reach_the_sandbox(modal_env: LocalModal) -> None:
    """debian_slim/from_registry + pip_install build; named and from_dict secrets become env vars; cpu/memory are recorded."""
    modal_env.add_secret("api-keys", {"API_KEY": "k-123"})
    modal_env.configure(image_build_delay=0.2)

    async def go() -> tuple[str, Any]:
        image = modal.Image.from_registry("python:3.11-slim").pip_install("requests")
        await modal.Image.debian_slim().pip_install("attrs").build.aio(await lookup_app())
        sb = await create(
            PY,
            "-c",
            "import os, time; print(os.environ['API_KEY'], os.environ['MODE']); time.sleep(0.3)",
            image=image,
            secrets=[modal.Secret.from_name("api-keys"), modal.Secret.from_dict({"MODE": "test"})],
            cpu=0.5,
            memory=256,
            timeout=30,
        )
        await asyncio.sleep(0.1)
        live = modal_env.statistics().live[0]
        out: str = await sb.stdout.read.aio()
        await sb.wait.aio()
        return out, live

    out, live = run(go)
    assert out == "k-123 test\n"
    assert (live.milli_cpu, live.memory_mb, live.timeout_s) == (500, 256, 30)
    assert live.injected_env == {"API_KEY": "k-123", "MODE": "test"}
    assert modal_env.statistics().image_builds >= 3


def test_unknown_secret_is_not_found(modal_env: LocalModal) -> None:
    """Secret.from_name for a name the server does not know raises NotFoundError."""

    async def go() -> None:
        with pytest.raises(NotFoundError, match="no-such-secret"):
            await modal.Secret.from_name("no-such-secret").hydrate.aio()

    run(go)


def test_failed_image_build_raises_image_build_error(modal_env: LocalModal) -> None:
    """An image build the server reports as failed surfaces as ImageBuildError."""
    modal_env.configure(image_build_error="pip install exploded")

    async def go() -> None:
        with pytest.raises(ImageBuildError, match="pip install exploded"):
            await create("true", image=modal.Image.debian_slim().pip_install("left-pad"))

    run(go)
    assert modal_env.statistics().creates == 0


def test_tags_list_from_id_and_detach(modal_env: LocalModal) -> None:
    """set_tags/get_tags, Sandbox.list(app_id, tags) (running ones only, newest first), from_id and detach."""

    async def go() -> None:
        the_app = await lookup_app()
        one = await create("sleep", "60")
        two = await create("sleep", "60")
        done = await create("true")
        await one.set_tags.aio({"run": "r1", "slot": "a"})
        await two.set_tags.aio({"run": "r1"})
        await done.set_tags.aio({"run": "r1"})
        await done.wait.aio()
        assert await one.get_tags.aio() == {"run": "r1", "slot": "a"}

        async def ids(tags: dict[str, str]) -> list[str]:
            found = modal.Sandbox.list.aio(app_id=the_app.app_id, tags=tags)
            return [sb.object_id async for sb in found]

        assert await ids({"run": "r1"}) == [two.object_id, one.object_id]
        assert await ids({"run": "r1", "slot": "a"}) == [one.object_id]
        assert await ids({"run": "r2"}) == []

        again = await modal.Sandbox.from_id.aio(one.object_id)
        assert again.object_id == one.object_id and await again.poll.aio() is None
        await again.terminate.aio()
        await one.wait.aio(raise_on_termination=False)
        assert one.returncode == 137
        await two.detach.aio()
        with pytest.raises(modal.exception.ClientClosed):
            await two.terminate.aio()
        await (await modal.Sandbox.from_id.aio(two.object_id)).terminate.aio()
        assert await ids({"run": "r1"}) == []

    run(go)
    assert modal_env.statistics().live == ()


def test_v1_sandboxes_work_too(modal_env: LocalModal, monkeypatch: pytest.MonkeyPatch) -> None:
    """With MODAL_SANDBOX_V2=0 the SDK's V1 path (SandboxGetLogs, SandboxStdinWrite) round-trips, decoding bad bytes as U+FFFD."""
    monkeypatch.setenv("MODAL_SANDBOX_V2", "0")
    script = "import sys; d = sys.stdin.read(); sys.stdout.buffer.write(d.upper().encode() + b'\\xff\\n')"

    async def go() -> tuple[str, str, int | None]:
        sb = await create(PY, "-c", script)
        sb.stdin.write(b"abc")
        sb.stdin.write_eof()
        await sb.stdin.drain.aio()
        out = await sb.stdout.read.aio()
        await sb.wait.aio()
        return sb.object_id, out, sb.returncode

    sandbox_id, out, code = run(go)
    assert (out, code) == ("ABC\ufffd\n", 0)
    assert len(sandbox_id) == 25  # the V1 id shape: "sb-" and 22 characters
    assert modal_env.statistics().rpcs["ModalClient/SandboxGetLogs"] >= 1


# -- refusals ----------------------------------------------------------------------------------


def test_rate_limit_with_retry_after_is_retried_by_the_sdk(modal_env: LocalModal) -> None:
    """Rate-limit refusals carry a retry-after hint, so the SDK waits and retries by itself: creates succeed, slower."""
    modal_env.configure(creation_rate=4, creation_burst=1)

    async def go() -> float:
        started = time.monotonic()
        for _ in range(3):
            await create("true")
        return time.monotonic() - started

    elapsed = run(go)
    stats = modal_env.statistics()
    assert stats.creates == 3
    assert stats.creates_refused.get("rate_limit", 0) >= 2
    assert elapsed > 0.4


def test_rate_limit_refusal_surfaces_as_resource_exhausted(
    modal_env: LocalModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a hint (or with MODAL_MAX_THROTTLE_WAIT=0) a rate-limit refusal raises ResourceExhaustedError at once."""
    modal_env.configure(creation_rate=1, creation_burst=1, rate_limit_retry_after=False)

    async def go() -> None:
        await create("true")
        with pytest.raises(ResourceExhaustedError, match="rate limit"):
            await create("true")
        modal_env.configure(rate_limit_retry_after=True, creation_rate=0.5)
        monkeypatch.setenv("MODAL_MAX_THROTTLE_WAIT", "0")
        with pytest.raises(ResourceExhaustedError, match="rate limit"):
            await create("true")

    run(go)
    stats = modal_env.statistics()
    assert stats.creates == 1 and stats.creates_refused == {"rate_limit": 2}


def test_running_cap_refuses_beyond_it(modal_env: LocalModal) -> None:
    """Beyond max_running sandboxes at once, create raises ResourceExhaustedError; after one ends, creation works again."""
    modal_env.configure(max_running=2)

    async def go() -> None:
        first = await create("sleep", "60")
        await create("sleep", "60")
        with pytest.raises(ResourceExhaustedError, match="2 running sandboxes"):
            await create("sleep", "60")
        await first.terminate.aio()
        await create("true")

    run(go)
    modal_env.terminate_all()
    stats = modal_env.statistics()
    assert stats.creates == 3 and stats.creates_refused == {"max_running": 1}
    assert stats.max_running == 2


def test_random_refusals_are_seeded(modal_env: LocalModal) -> None:
    """Random refusals (probability p) follow the seed: the same seed refuses the same creations."""

    async def pattern() -> list[bool]:
        outcome = []
        for _ in range(12):
            try:
                await create("true")
                outcome.append(True)
            except ResourceExhaustedError:
                outcome.append(False)
        return outcome

    modal_env.configure(refusal_probability=0.5)
    modal_env.seed(7)
    first = run(pattern)
    modal_env.seed(7)
    second = run(pattern)
    assert first == second
    assert 0 < first.count(False) < 12
    assert modal_env.statistics().creates_refused == {"random": 2 * first.count(False)}


def test_sdk_retries_unavailable_three_times_by_itself(modal_env: LocalModal) -> None:
    """The SDK retries UNAVAILABLE on its own (3 retries): 3 failures are invisible, 4 raise ServiceError."""

    async def go() -> None:
        await lookup_app()
        modal_env.fail_next("ModalClient/SandboxCreateV2", Status.UNAVAILABLE, count=3)
        await create("true")
        modal_env.fail_next("ModalClient/SandboxCreateV2", Status.UNAVAILABLE, count=4)
        with pytest.raises(ServiceError, match="injected UNAVAILABLE"):
            await create("true")

    run(go)
    stats = modal_env.statistics()
    assert stats.rpcs["ModalClient/SandboxCreateV2"] == 8
    assert stats.creates == 1 and stats.creates_refused == {"injected": 7}


def test_wrong_token_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client with other credentials is refused with UNAUTHENTICATED (AuthError)."""
    with LocalModal() as env, env.environ():
        monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-wrong")
        with pytest.raises(AuthError):
            run(lookup_app)


def test_unimplemented_rpcs_fail_loudly(modal_env: LocalModal) -> None:
    """An RPC the server does not implement fails with UNIMPLEMENTED naming the method, and is counted."""

    async def go() -> None:
        sb = await create("sleep", "60", encrypted_ports=[8080])
        try:
            with pytest.raises(UnimplementedError, match="SandboxGetTunnelsV2"):
                await sb.tunnels.aio()
        finally:
            await sb.terminate.aio()

    run(go)
    assert modal_env.statistics().unimplemented == {"ModalClient/SandboxGetTunnelsV2": 1}


# -- outages, cancellation, connections -------------------------------------------------------


def test_stall_hangs_calls_until_resume(modal_env: LocalModal) -> None:
    """While stalled, SDK calls hang (SandboxCreateV2 has no deadline); the caller's cancel reaches the server; resume() serves again."""

    async def go() -> None:
        the_app = await lookup_app()
        await create("true", app=the_app)  # app, environment, image and auth token are cached now
        modal_env.stall()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(create("true", app=the_app), 0.5)
        modal_env.resume()
        sb = await create("true", app=the_app)
        await sb.wait.aio()

    run(go)
    stats = modal_env.statistics()
    assert stats.rpcs_cancelled == {"ModalClient/SandboxCreateV2": 1}
    assert stats.creates == 2


def test_vanish_refuses_connections_while_sandboxes_keep_running(modal_env: LocalModal) -> None:
    """During an outage wait() fails with ConnectionError after the SDK's retries; the sandbox keeps running and is waited for after come_back()."""
    script = "import time; time.sleep(1); print('survived')"

    async def go() -> tuple[float, str, int | None]:
        sb = await create(PY, "-c", script)
        modal_env.vanish()
        started = time.monotonic()
        with pytest.raises(ModalConnectionError):
            await sb.wait.aio()
        failed_after = time.monotonic() - started
        out: str = await sb.stdout.read.aio()  # the router is another service: still there
        modal_env.come_back()
        again = await modal.Sandbox.from_id.aio(sb.object_id)
        await again.wait.aio()
        return failed_after, out, again.returncode

    failed_after, out, code = run(go)
    assert failed_after < 3
    assert (out, code) == ("survived\n", 0)
    assert modal_env.statistics().connections["api"] == 2


def test_cancelled_wait_and_stdout_read_lose_nothing(modal_env: LocalModal) -> None:
    """Cancelling sandbox.wait() or a pending stdout read cancels the RPC on the server; a later read resumes at the same byte."""
    script = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.3)\n"

    async def go() -> list[str]:
        sb = await create(PY, "-c", script)
        waiting = asyncio.ensure_future(sb.wait.aio())
        await asyncio.sleep(0.1)
        waiting.cancel()
        lines = []
        reader = sb.stdout.__aiter__()
        lines.append(await reader.__anext__())
        pending = asyncio.ensure_future(reader.__anext__())
        await asyncio.sleep(0.1)
        assert not pending.done()
        pending.cancel()
        lines.append(await sb.stdout.read.aio())
        await sb.wait.aio()
        return lines

    assert run(go) == ["0\n", "1\n2\n3\n"]
    cancelled = modal_env.statistics().rpcs_cancelled
    assert cancelled["ModalClient/SandboxWaitV2"] == 1
    assert cancelled["TaskCommandRouter/SandboxStdioReadV2"] >= 1


def test_stream_limit_per_connection_queues_calls_in_the_sdk() -> None:
    """The SDK multiplexes all control-plane calls on one HTTP/2 connection: with 1 stream allowed, a call waits for a long poll to end."""
    with LocalModal(max_concurrent_streams=1) as env, env.environ():

        async def go() -> float:
            sb = await create(PY, "-c", "import time; time.sleep(1)")
            waiting = asyncio.ensure_future(sb.wait.aio())
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await modal.Sandbox.from_id.aio(sb.object_id)
            queued = time.monotonic() - started
            await waiting
            return queued

        queued = run(go)
        stats = env.statistics()
    assert queued > 0.5
    assert stats.connections["api"] == 1


def test_sdk_opens_one_api_connection_and_one_router_connection_per_sandbox(
    modal_env: LocalModal,
) -> None:
    """All control-plane calls share one HTTP/2 connection; each sandbox's stdio gets a router connection of its own."""

    async def go() -> list[str]:
        sandboxes = await asyncio.gather(*(create("echo", str(i)) for i in range(3)))
        outs = [await sb.stdout.read.aio() for sb in sandboxes]
        await asyncio.gather(*(sb.wait.aio() for sb in sandboxes))
        return outs

    assert run(go) == ["0\n", "1\n", "2\n"]
    assert modal_env.statistics().connections == {"api": 1, "router": 3}


def test_nothing_left_running_after_a_mixed_workload(modal_env: LocalModal) -> None:
    """Statistics count creates, exits by kind and live sandboxes; wait_idle() says when nothing is left running."""

    async def go() -> None:
        await asyncio.gather(*(create("true") for _ in range(5)))
        await create(PY, "-c", "import time; time.sleep(0.3)", timeout=1)
        slow = await create("sleep", "60")
        await slow.set_tags.aio({"kind": "slow"})
        stats = modal_env.statistics()
        assert slow.object_id in stats.live_ids
        assert [sb.tags for sb in stats.live if sb.sandbox_id == slow.object_id] == [
            {"kind": "slow"}
        ]
        await slow.terminate.aio()

    run(go)
    assert modal_env.wait_idle(5)
    stats = modal_env.statistics()
    assert stats.creates == 7 and stats.running == 0 and stats.processes_alive == 0
    assert stats.exits == {"success": 6, "terminated": 1}
    assert stats.max_running >= 2


# -- ways to run it ----------------------------------------------------------------------------

from arcflow.testing.modal_server.fixture import make_fixture  # noqa: E402

packaged_modal = make_fixture(idle_timeout=5, creation_rate=100)


def test_pytest_fixture_points_the_sdk_at_the_server(packaged_modal: LocalModal) -> None:
    """A fixture from ``make_fixture`` starts a server and sets the MODAL_* variables for the SDK."""
    assert os.environ["MODAL_SERVER_URL"] == packaged_modal.url

    async def go() -> str:
        sb = await create("echo", "from the fixture")
        out: str = await sb.stdout.read.aio()
        await sb.wait.aio()
        return out

    assert run(go) == "from the fixture\n"
    assert packaged_modal.statistics().creates == 1


async def test_trio_asyncio_test_drives_the_sdk() -> None:
    """From a trio test: ``async with LocalModal()`` and the SDK through trio-asyncio, as arcflow's executor does."""
    import trio
    import trio_asyncio

    async with LocalModal() as env:
        with env.environ():
            async with trio_asyncio.open_loop():
                aio = trio_asyncio.aio_as_trio
                the_app = await aio(modal.App.lookup.aio)("trio-test", create_if_missing=True)
                sb = await aio(modal.Sandbox.create.aio)("echo", "trio", app=the_app)
                out = await aio(sb.stdout.read.aio)()
                await aio(sb.wait.aio)()
        with trio.fail_after(5):
            assert await env.wait_idle_async(5)
        assert out == "trio\n" and env.statistics().creates == 1


# -- phase 2: Sandbox.exec ---------------------------------------------------------------------


def test_exec_runs_processes_in_a_long_lived_sandbox(modal_env: LocalModal) -> None:
    """Sandbox.exec gives a ContainerProcess with stdin/stdout/stderr/wait/returncode; text=False passes raw bytes; terminate kills execs."""
    script = (
        "import sys; d = sys.stdin.read(); print(d[::-1]); print('e', file=sys.stderr); sys.exit(4)"
    )

    async def go() -> tuple[Any, ...]:
        sb = await create("sleep", "infinity")
        proc = await sb.exec.aio(PY, "-c", script)
        proc.stdin.write(b"stressed")
        proc.stdin.write_eof()
        await proc.stdin.drain.aio()
        out, err = await proc.stdout.read.aio(), await proc.stderr.read.aio()
        code = await proc.wait.aio()
        raw = await sb.exec.aio(
            PY, "-c", "import sys; sys.stdout.buffer.write(b'\\xff\\x00')", text=False
        )
        raw_out = await raw.stdout.read.aio()
        await raw.wait.aio()
        sleeper = await sb.exec.aio("sleep", "60")
        still_running = await sleeper.poll.aio()
        await sb.terminate.aio()
        killed = await sleeper.wait.aio()
        return out, err, code, proc.returncode, raw_out, still_running, killed

    out, err, code, returncode, raw_out, still_running, killed = run(go)
    assert (out, err, code, returncode) == ("desserts\n", "e\n", 4, 4)
    assert raw_out == b"\xff\x00"
    assert (still_running, killed) == (None, 137)
    stats = modal_env.statistics()
    assert stats.execs_started == 3 and stats.execs_running == 0
    assert stats.rpcs["TaskCommandRouter/TaskExecStart"] == 3


def test_exec_timeout_kills_the_process(modal_env: LocalModal) -> None:
    """An exec's timeout ends it: wait() returns -1 (the SDK's deadline) and the process is killed."""

    async def go() -> tuple[int, float, str]:
        sb = await create("sleep", "infinity")
        proc = await sb.exec.aio("sleep", "30", timeout=1)
        started = time.monotonic()
        code = await proc.wait.aio()
        elapsed = time.monotonic() - started
        await sb.terminate.aio()
        return code, elapsed, sb.object_id

    code, elapsed, _ = run(go)
    assert code == -1 and elapsed < 3
    assert modal_env.statistics().execs_running == 0


def test_exec_waits_for_the_cold_start_and_many_execs_leave_nothing(modal_env: LocalModal) -> None:
    """(warm pool) An exec sent during the container's cold start runs once it has started;
    100 execs in one sandbox (stdin in several messages, then EOF) leave no process and no
    open file behind; an exec in a sandbox that has ended is refused."""
    modal_env.configure(start_delay=0.6)

    async def go() -> tuple[Any, ...]:
        started = time.monotonic()
        sb = await create("sleep", "infinity")
        first = await sb.exec.aio(PY, "-c", "print('up')")
        waited = time.monotonic() - started
        out = await first.stdout.read.aio()
        await first.wait.aio()
        before = len(os.listdir("/proc/self/fd"))
        codes, tails = set(), set()
        for i in range(100):
            proc = await sb.exec.aio("tail", "-c", "3", text=False)
            for piece in (b"a" * 70_000, b"b" * 70_000, str(i).encode()):
                proc.stdin.write(piece)
                await proc.stdin.drain.aio()
            proc.stdin.write_eof()
            await proc.stdin.drain.aio()
            tails.add((await proc.stdout.read.aio()) == str(i).encode()[-3:].rjust(3, b"b"))
            codes.add(await proc.wait.aio())
        grew = len(os.listdir("/proc/self/fd")) - before
        running = modal_env.statistics().execs_running
        await sb.terminate.aio()
        try:
            await sb.exec.aio("true")
            refused = None
        except Exception as exc:
            refused = exc
        await sb.detach.aio()
        return waited, out, codes, tails, grew, running, refused

    waited, out, codes, tails, grew, running, refused = run(go, timeout=120)
    assert waited >= 0.5 and out == "up\n"
    assert (codes, tails) == ({0}, {True})
    assert grew <= 2 and running == 0
    assert refused is not None
    stats = modal_env.statistics()
    assert stats.execs_started == 101 and stats.execs_running == 0


def test_accepted_connections_do_not_wait_for_delayed_acks(modal_env: LocalModal) -> None:
    """Both servers' accepted sockets have TCP_NODELAY (else every request/answer exchange waits
    ~40 ms for a delayed ACK): 30 execs run and waited for one after another take < 25 ms each."""
    import socket

    async def go() -> float:
        sb = await create("sleep", "infinity")
        await (await sb.exec.aio("true")).wait.aio()
        started = time.monotonic()
        for _ in range(30):
            await (await sb.exec.aio("true")).wait.aio()
        took = (time.monotonic() - started) / 30
        await sb.terminate.aio()
        await sb.detach.aio()
        return took

    each = run(go)
    flags = [
        protocol.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        for server in modal_env._servers.values()
        if server is not None
        for protocol in server.protocols
    ]
    assert flags and all(flags), flags
    assert each < 0.025, each


# -- phase 2: Functions ------------------------------------------------------------------------


class ScoringError(Exception):
    """Raised by a registered function; pickled and re-raised in the caller as Modal does."""


def score(answer: str, *, weight: float = 1.0) -> float:
    if answer == "bad":
        raise ScoringError(f"cannot score {answer!r}")
    return len(answer) * weight


def test_function_remote_spawn_get_and_from_id(modal_env: LocalModal) -> None:
    """Function.from_name(...).remote/.spawn run a registered local callable; FunctionCall.get and from_id fetch the result (repeatably)."""
    modal_env.register_function("scorer", "score", score)

    async def go() -> tuple[Any, ...]:
        fn = modal.Function.from_name("scorer", "score", environment_name="main")
        direct = await fn.remote.aio("four", weight=2.0)
        call = await fn.spawn.aio("seven!!")
        first = await call.get.aio(timeout=5)
        again = await call.get.aio(timeout=5)
        by_id = await modal.FunctionCall.from_id(call.object_id).get.aio(timeout=5)
        return direct, call.object_id, first, again, by_id

    direct, call_id, first, again, by_id = run(go)
    assert direct == 8.0 and first == again == by_id == 7.0
    assert call_id.startswith("fc-")
    functions = modal_env.statistics().functions
    assert functions is not None
    assert functions.calls_started == {"score": 2} and functions.calls_finished == {"success": 2}


def test_function_exception_is_reraised_with_its_traceback(modal_env: LocalModal) -> None:
    """A registered function's exception reaches the caller as the same exception type, with the remote frames in its traceback."""
    import traceback

    modal_env.register_function("scorer", "score", score)

    async def go() -> BaseException:
        fn = modal.Function.from_name("scorer", "score")
        try:
            await fn.remote.aio("bad")
        except ScoringError as exc:
            return exc
        raise AssertionError("no exception")

    exc = run(go)
    assert str(exc) == "cannot score 'bad'"
    assert "in score" in "".join(traceback.format_exception(exc))
    functions = modal_env.statistics().functions
    assert functions is not None and functions.calls_finished == {"failure": 1}


def test_unknown_function_is_not_found(modal_env: LocalModal) -> None:
    """Function.from_name for a function the server does not know raises NotFoundError on first use."""
    modal_env.register_function("scorer", "score", score)

    async def go() -> None:
        with pytest.raises(NotFoundError, match="'missing'"):
            await modal.Function.from_name("scorer", "missing").hydrate.aio()
        with pytest.raises(NotFoundError):
            await modal.Function.from_name(
                "scorer", "score", environment_name="other"
            ).hydrate.aio()

    run(go)


def test_function_call_cancel_stops_it(modal_env: LocalModal) -> None:
    """get(timeout) on an unfinished call raises TimeoutError; cancel() stops the handler and get() then raises RemoteError."""
    stopped: list[str] = []

    async def slow(seconds: float) -> float:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise
        return seconds

    modal_env.register_function("jobs", "slow", slow)

    async def go() -> None:
        call = await modal.Function.from_name("jobs", "slow").spawn.aio(30)
        with pytest.raises(TimeoutError):
            await call.get.aio(timeout=0.3)
        running = modal_env.statistics().functions
        assert running is not None and running.calls_running == 1
        await call.cancel.aio()
        with pytest.raises(modal.exception.RemoteError, match="cancelled"):
            await call.get.aio(timeout=5)

    run(go)
    assert stopped == ["cancelled"]
    functions = modal_env.statistics().functions
    assert functions is not None
    assert functions.calls_cancelled == 1 and functions.calls_running == 0


def test_function_capacity_is_max_containers_times_max_inputs(modal_env: LocalModal) -> None:
    """With 1 container of 2 concurrent inputs and a cold start, 4 calls run 2 at a time after one cold start."""

    async def work(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    modal_env.register_function(
        "jobs", "work", work, max_containers=1, max_inputs=2, cold_start=0.3
    )

    async def go() -> tuple[list[float], float]:
        fn = modal.Function.from_name("jobs", "work")
        started = time.monotonic()
        calls = [await fn.spawn.aio(0.3) for _ in range(4)]
        results = [await call.get.aio(timeout=10) for call in calls]
        return results, time.monotonic() - started

    results, elapsed = run(go)
    assert results == [0.3] * 4
    assert 0.85 < elapsed < 3  # cold start + two rounds of 0.3 s
    functions = modal_env.statistics().functions
    assert functions is not None
    assert functions.max_concurrent == {"work": 2} and functions.containers_started == {"work": 1}


def test_function_timeout_raises_function_timeout_error(modal_env: LocalModal) -> None:
    """A call running past the function's timeout fails with FunctionTimeoutError."""

    async def hang() -> None:
        await asyncio.sleep(30)

    modal_env.register_function("jobs", "hang", hang, timeout=0.3)

    async def go() -> None:
        with pytest.raises(modal.exception.FunctionTimeoutError):
            await modal.Function.from_name("jobs", "hang").remote.aio()

    run(go)


def test_command_backed_function(modal_env: LocalModal) -> None:
    """A function backed by a command gets the arguments as JSON on stdin and returns its JSON stdout; a non-zero exit is a RemoteError."""
    adder = "import json, sys; a = json.load(sys.stdin)['args']; print(json.dumps(a[0] + a[1]))"
    modal_env.register_function("tools", "add", command=[PY, "-c", adder])

    async def go() -> None:
        fn = modal.Function.from_name("tools", "add")
        assert await fn.remote.aio(2, 3) == 5
        assert await (await fn.spawn.aio("a", "b")).get.aio(timeout=5) == "ab"
        with pytest.raises(modal.exception.RemoteError, match="exited with 1"):
            await fn.remote.aio(1)

    run(go)
