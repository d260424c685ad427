"""``python -m arcflow view``: the reports of a database, served on 127.0.0.1 for browsing.

A small HTTP/1.1 server on trio (GET and HEAD, one request per connection),
reading the database through one :class:`~arcflow.store.Store` connection
at a time.  Pages:

* ``/``: the runs, newest first, with a form comparing two of them;
* ``/runs/RUN``: the run's report with its scenario table (``?limit=N``, ``all``);
* ``/runs/RUN/scenarios/SCENARIO``: every attempt of one scenario (output, error,
  stderr tail, executor details);
* ``/diff?a=RUN_A&b=RUN_B``: the two runs compared (``&all=1``: every scenario),
  each row linking to both sides.

It only listens on loopback, answers only requests addressed to loopback
names (a page elsewhere cannot read it through DNS rebinding), and every page
is self-contained (a strict Content-Security-Policy: nothing is fetched).
"""

from __future__ import annotations

import html
import logging
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TextIO
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import attrs
import trio

from ..errors import ConfigError
from .diff import build_diff
from .html import render_diff_html, render_html, render_outcome_html, render_runs_html
from .options import DEFAULT_PORT
from .queries import build_report, list_runs, scenario_attempts, scenario_rows

log = logging.getLogger("arcflow.view")

#: Scenario rows on a run's page unless ``?limit=`` says otherwise.
DEFAULT_ROWS = 2000

_MAX_REQUEST = 16 * 1024
_READ_TIMEOUT = 10.0
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def run_href(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


def outcome_href(run_id: str, scenario_id: str) -> str:
    return f"{run_href(run_id)}/scenarios/{quote(scenario_id, safe='')}"


def diff_href(a: str, b: str) -> str:
    return "/diff?" + urlencode({"a": a, "b": b})


@attrs.frozen
class Response:
    status: int
    body: str
    content_type: str = "text/html; charset=utf-8"


class NotFound(Exception):
    """A page that does not exist (404)."""


def _error_page(status: int, title: str, message: str) -> Response:
    e = html.escape
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{e(title)}</title></head><body><nav><a href="/">runs</a></nav>'
        f"<h1>{e(title)}</h1><p>{e(message)}</p></body></html>\n"
    )
    return Response(status, body)


class Viewer:
    """The pages, read from ``store`` (one query at a time: a Store is not shared concurrently)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._lock = trio.Lock()

    async def respond(self, target: str) -> Response:
        """The response for a GET of ``target`` (path and query)."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        try:
            async with self._lock:
                if parts.path == "/":
                    return await self._runs(query)
                if segments[:1] == ["runs"] and len(segments) == 2 and segments[1]:
                    return await self._run(segments[1], query)
                if segments[:1] == ["runs"] and len(segments) == 4 and segments[2] == "scenarios":
                    return await self._outcome(segments[1], segments[3])
                if parts.path == "/diff":
                    return await self._diff(query)
            raise NotFound(f"no page {parts.path}")
        except (NotFound, ConfigError) as exc:
            status = 404 if isinstance(exc, NotFound) or "no run" in str(exc) else 400
            return _error_page(status, "not found" if status == 404 else "bad request", str(exc))

    async def _runs(self, query: dict[str, str]) -> Response:
        limit = _int(query.get("limit"), 100)
        runs = await list_runs(self.store, limit=limit)
        return Response(200, render_runs_html(runs, run_link=run_href, diff_action="/diff"))

    async def _run(self, run_id: str, query: dict[str, str]) -> Response:
        report = await build_report(self.store, run_id)
        raw = query.get("limit")
        limit = 1_000_000_000 if raw == "all" else _int(raw, DEFAULT_ROWS)
        rows = await scenario_rows(self.store, run_id, limit=limit, detail_chars=300)
        page = render_html(
            report,
            rows,
            link=lambda sid: outcome_href(run_id, sid),
            nav=[("runs", "/"), ("all scenarios", f"{run_href(run_id)}?limit=all")],
        )
        return Response(200, page)

    async def _outcome(self, run_id: str, scenario_id: str) -> Response:
        if await self.store.get_run(run_id) is None:
            raise NotFound(f"no run {run_id!r} in the database")
        attempts = await scenario_attempts(self.store, run_id, scenario_id)
        if not attempts:
            raise NotFound(f"no outcome of scenario {scenario_id!r} in run {run_id!r}")
        page = render_outcome_html(
            run_id, scenario_id, attempts, nav=[("runs", "/"), (f"run {run_id}", run_href(run_id))]
        )
        return Response(200, page)

    async def _diff(self, query: dict[str, str]) -> Response:
        a, b = query.get("a"), query.get("b")
        if not a or not b:
            raise ConfigError("a diff needs two runs: /diff?a=RUN_A&b=RUN_B")
        diff = await build_diff(self.store, a, b, all=query.get("all") in ("1", "true", "yes"))
        sides = {"a": a, "b": b}
        page = render_diff_html(
            diff,
            link=lambda side, sid: outcome_href(sides[side], sid),
            run_link=run_href,
            nav=[
                ("runs", "/"),
                (f"A: {a}", run_href(a)),
                (f"B: {b}", run_href(b)),
                ("every scenario", diff_href(a, b) + "&all=1"),
            ],
        )
        return Response(200, page)


def _int(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"limit={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"limit={raw!r} must be >= 1")
    return value


# -- HTTP ---------------------------------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = b""
    with trio.move_on_after(_READ_TIMEOUT):
        while b"\r\n\r\n" not in data and len(data) <= _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return None
            data += chunk
        return data
    return None


def _host_allowed(host: str, port: int) -> bool:
    return host in {f"{name}:{port}" for name in _LOOPBACK_NAMES} or host in _LOOPBACK_NAMES


async def handle(
    stream: trio.abc.Stream,
    respond: Callable[[str], Awaitable[Response]],
    port: int,
) -> None:
    """Serve one request on ``stream`` and close it."""
    try:
        head = await _read_head(stream)
        if head is None:
            return
        if len(head) > _MAX_REQUEST:
            response = _error_page(431, "request too large", "headers too large")
            method = "GET"
        else:
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            request = lines[0].split(" ")
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:])
            }
            method = request[0] if request else ""
            if len(request) != 3 or not request[1].startswith("/"):
                response = _error_page(400, "bad request", "malformed request line")
            elif method not in ("GET", "HEAD"):
                response = _error_page(405, "method not allowed", "only GET and HEAD")
            elif not _host_allowed(headers.get("host", ""), port):
                response = _error_page(403, "forbidden", "this viewer answers loopback names only")
            else:
                try:
                    response = await respond(request[1])
                except Exception as exc:
                    log.exception("view: %s failed", request[1])
                    response = _error_page(500, "error", f"{type(exc).__name__}: {exc}")
        body = response.body.encode("utf-8")
        status_line = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}"
        headers_out = [
            status_line,
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
            f"Content-Security-Policy: {_CSP}",
            "X-Content-Type-Options: nosniff",
            "Referrer-Policy: no-referrer",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        payload = ("\r\n".join(headers_out) + "\r\n\r\n").encode("latin-1")
        await stream.send_all(payload + (b"" if method == "HEAD" else body))
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass
    finally:
        await stream.aclose()


async def serve(
    store: Any,
    *,
    port: int = DEFAULT_PORT,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the viewer on 127.0.0.1:``port`` (0: any free port) until cancelled;
    ``task_status.started(url)`` once listening."""
    try:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; try another --port (0: any free one)"
        ) from None
    bound = listeners[0].socket.getsockname()[1]
    viewer = Viewer(store)

    async def handler(stream: trio.SocketStream) -> None:
        await handle(stream, viewer.respond, bound)

    task_status.started(f"http://127.0.0.1:{bound}/")
    await trio.serve_listeners(handler, listeners)


async def view_command(store: Any, *, port: int, err: TextIO) -> None:
    """``python -m arcflow view``: serve until Ctrl-C (or SIGTERM), printing the URL on ``err``."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, store, port=port))
            print(f"arcflow: serving the reports at {url} (Ctrl-C to stop)", file=err, flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
