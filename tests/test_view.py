"""The HTML pages and `python -m arcflow view`, checked over HTTP and in a real headless Chromium.

The browser is the system's Chromium driven by its chromedriver through the W3C
WebDriver protocol (JSON over HTTP on 127.0.0.1, with the small client below:
nothing is downloaded).  Where Chromium is missing these tests skip, except
under ``CI=true``, where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from conftest import IN_CI

import arcflow
from arcflow import cli
from arcflow.report import build_report, open_report_store, render_html, scenario_rows
from arcflow.report.html import split_stderr
from arcflow.testing import make_outcome

ROOT = Path(__file__).resolve().parent.parent

STDERR = "Traceback (most recent call last):\nValueError: bad gamma <b>"
GAMMA_ERROR = f"process exited with code 3; stderr:\n{STDERR}"


def run_a(run_id: str) -> list[Any]:
    o = make_outcome
    return [
        o(run_id, "alpha", "passed", score=0.9, duration_ms=30, tags=["fast"], output={"a": 1}),
        o(run_id, "beta", "failed", score=0.2, duration_ms=10, tags=["slow"], output={"b": 2}),
        o(
            run_id,
            "gamma",
            "error",
            duration_ms=20,
            tags=["slow"],
            error_type="ProcessExitError",
            error_message=GAMMA_ERROR,
            executor={"kind": "process", "exit_code": 3},
        ),
        o(run_id, "delta", "passed", score=1.0, duration_ms=40, tags=["fast", "slow"]),
        o(run_id, "epsilon", "timeout", duration_ms=50, error_message="timed out after 5s"),
    ]


def run_b(run_id: str) -> list[Any]:
    o = make_outcome
    return [
        o(run_id, "alpha", "failed", score=0.1, duration_ms=35, tags=["fast"], output={"a": 0}),
        o(run_id, "beta", "passed", score=0.8, duration_ms=12, tags=["slow"]),
        o(run_id, "gamma", "error", duration_ms=22, tags=["slow"], error_message=GAMMA_ERROR),
        o(run_id, "delta", "passed", score=1.0, duration_ms=41, tags=["fast", "slow"]),
        o(run_id, "zeta", "passed", score=1.0, duration_ms=5),
    ]


@pytest.fixture(scope="module")
def runs(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Runs A and B above: alpha regressed, beta fixed, zeta new, epsilon missing."""
    tag = uuid.uuid4().hex[:8]
    a, b = f"view-a-{tag}", f"view-b-{tag}"
    data_dir = tmp_path_factory.mktemp("view-data")

    async def go() -> None:
        for run_id, rows in ((a, run_a(a)), (b, run_b(b))):
            async with arcflow.open_runtime(db=dsn, run_id=run_id, data_dir=data_dir) as rt:
                for outcome in rows:
                    await rt.record(outcome)

    trio.run(go)
    return a, b


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ARCFLOW_")}


class Viewer:
    """``python -m arcflow view --port 0`` in a child process; ``url`` once it listens."""

    def __init__(self, dsn: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "arcflow", "view", "--db", dsn, "--port", "0", *extra],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=_clean_env(),
        )
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()
        if "http://" not in self.banner:
            self.proc.kill()
            raise AssertionError(f"view did not start: {self.banner}{self.proc.stderr.read()}")
        self.url = self.banner.split("at ", 1)[1].split(" ", 1)[0]
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def viewer(dsn: str, runs: tuple[str, str]) -> Iterator[Viewer]:
    """One viewer of the session database for the module."""
    v = Viewer(dsn)
    yield v
    v.stop()


def fetch(
    viewer: Viewer, path: str, *, method: str = "GET", host: str | None = None
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
    try:
        headers = {"Host": host} if host is not None else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read().decode(),
        )
    finally:
        conn.close()


# -- without a browser ----------------------------------------------------------------------------------


def test_split_stderr_finds_the_tail() -> None:
    """The stderr tail comes from the executor's details, else from the message's '; stderr:' part."""
    assert split_stderr(GAMMA_ERROR, {}) == ("process exited with code 3", STDERR)
    assert split_stderr("plain", {"stderr_tail": "tail"}) == ("plain", "tail")
    assert split_stderr(None, None) == ("", "")


def test_viewer_pages_over_http(viewer: Viewer, runs: tuple[str, str]) -> None:
    """Runs, a run, an outcome and a diff are 200 with a strict CSP; unknown ones are 404, bad ones 400."""
    a, b = runs
    status, headers, body = fetch(viewer, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert f'href="/runs/{a}"' in body and f'value="{b}"' in body
    status, _, body = fetch(viewer, f"/runs/{a}")
    assert status == 200 and f'href="/runs/{a}/scenarios/gamma"' in body
    status, _, body = fetch(viewer, f"/runs/{a}/scenarios/gamma")
    assert status == 200 and "ValueError: bad gamma &lt;b&gt;" in body and "<b>" not in body
    status, _, body = fetch(viewer, f"/diff?a={a}&b={b}")
    assert status == 200
    assert (
        f'href="/runs/{a}/scenarios/alpha"' in body and f'href="/runs/{b}/scenarios/alpha"' in body
    )
    assert fetch(viewer, "/runs/no-such-run")[0] == 404
    assert fetch(viewer, f"/runs/{a}/scenarios/no-such")[0] == 404
    assert fetch(viewer, "/nothing/here")[0] == 404
    assert fetch(viewer, "/diff?a=x")[0] == 400
    assert fetch(viewer, f"/runs/{a}?limit=zero")[0] == 400


def test_viewer_refuses_what_it_should_not_answer(viewer: Viewer) -> None:
    """Other Host names (DNS rebinding) are 403, POST is 405, HEAD has no body."""
    assert fetch(viewer, "/", host="evil.example:80")[0] == 403
    assert fetch(viewer, "/", host=f"localhost:{viewer.port}")[0] == 200
    assert fetch(viewer, "/", method="POST")[0] == 405
    status, headers, body = fetch(viewer, "/", method="HEAD")
    assert status == 200 and int(headers["content-length"]) > 0 and body == ""


def test_view_command_prints_its_url_and_stops_on_ctrl_c(dsn: str, runs: tuple[str, str]) -> None:
    """`view` binds 127.0.0.1, prints the URL, serves, and exits 0 on SIGINT; a taken port is exit 2."""
    v = Viewer(dsn)
    try:
        assert v.url.startswith("http://127.0.0.1:") and "Ctrl-C to stop" in v.banner
        with urllib.request.urlopen(v.url, timeout=10) as response:
            assert response.status == 200
        taken = subprocess.run(
            [sys.executable, "-m", "arcflow", "view", "--db", dsn, "--port", str(v.port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
        )
        assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{v.port}" in taken.stderr
    finally:
        assert v.stop() == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(v.url, timeout=2)


# -- the browser ------------------------------------------------------------------------------------------

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Browser:
    """Headless Chromium through chromedriver (W3C WebDriver over HTTP on 127.0.0.1)."""

    def __init__(self, chromedriver: str, chromium: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="arcflow-chromium-")
        port = _free_port()
        self.proc = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.05)
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={self.profile}",
            "--window-size=1400,1000",
        ]
        options = {"binary": chromium, "args": args}
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"webdriver {method} {path}: {exc.read().decode()[:800]}"
            ) from None

    def cmd(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        element: str = self.cmd("POST", "/element", {"using": "css selector", "value": css})[
            ELEMENT
        ]
        return element

    def click(self, css: str) -> None:
        """A real click on the first element matching ``css`` (scrolled into view)."""
        self.cmd("POST", f"/element/{self.find(css)}/click", {})

    def type(self, css: str, text: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/value", {"text": text})

    def clear(self, css: str) -> None:
        self.cmd("POST", f"/element/{self.find(css)}/clear", {})

    def keys(self, text: str) -> None:
        """Key presses to whatever has the focus."""
        actions = [{"type": "keyDown", "value": text}, {"type": "keyUp", "value": text}]
        self.cmd("POST", "/actions", {"actions": [{"type": "key", "id": "kb", "actions": actions}]})

    def js(self, script: str, *args: Any) -> Any:
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    @property
    def url(self) -> str:
        value: str = self.cmd("GET", "/url")
        return value

    def arrive(self, url: str, *, prefix: bool = False, timeout: float = 10.0) -> str:
        """Wait until the page at ``url`` (or starting with it) has loaded; its address."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.url
            ready = self.js("return document.readyState") == "complete"
            if ready and (now.startswith(url) if prefix else now == url):
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"still at {now}, not at {url}")
            time.sleep(0.02)

    def shown(self) -> list[str]:
        """The first cell of each visible row of the page's first scenario table, in order."""
        rows: list[str] = self.js(
            "return [...document.querySelectorAll('.scn tbody tr')]"
            ".filter(r => !r.hidden && r.offsetParent !== null).map(r => r.cells[0].textContent)"
        )
        return rows

    def text(self, css: str) -> str:
        value: str = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
        )
        return value

    def quit(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium; missing is a skip here and a failure under CI=true."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        message = "Chromium and chromedriver are needed: apt-get install chromium chromium-driver"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    b = Browser(chromedriver, chromium)
    yield b
    b.quit()


def _write_report(dsn: str, run_id: str, path: Path) -> None:
    async def go() -> None:
        async with open_report_store(dsn, "unused") as store:
            report = await build_report(store, run_id)
            path.write_text(render_html(report, await scenario_rows(store, run_id)), "utf-8")

    trio.run(go)


def test_report_table_sorts_filters_searches_and_opens_details(
    browser: Browser, dsn: str, runs: tuple[str, str], tmp_path: Path
) -> None:
    """In a written report: a header click sorts, status and tag filters hide rows, search narrows,
    a row click opens its output, error and stderr tail."""
    page = tmp_path / "report.html"
    _write_report(dsn, runs[0], page)
    browser.get(page.as_uri())
    assert browser.shown() == ["beta", "epsilon", "gamma", "alpha", "delta"]  # not passed first
    assert browser.text(".f-count") == "5 of 5 shown"

    browser.click(".scn thead th:nth-child(5)")  # duration ms
    assert browser.shown() == ["beta", "gamma", "alpha", "delta", "epsilon"]
    browser.click(".scn thead th:nth-child(5)")
    assert browser.shown() == ["epsilon", "delta", "alpha", "gamma", "beta"]
    browser.click(".scn thead th:nth-child(1)")  # scenario, by text
    assert browser.shown() == ["alpha", "beta", "delta", "epsilon", "gamma"]

    browser.click(".f-status option[value=passed]")
    assert browser.shown() == ["alpha", "delta"]
    browser.click(".f-tag option[value=slow]")
    assert browser.shown() == ["delta"]
    browser.click(".f-status option[value='']")
    assert (
        browser.shown() == ["beta", "delta", "gamma"] and browser.text(".f-count") == "3 of 5 shown"
    )
    browser.click(".f-tag option[value='']")

    browser.type(".f-search", "valueerror")  # inside gamma's stderr tail, any case
    assert browser.shown() == ["gamma"]
    browser.clear(".f-search")
    browser.type(".f-search", "ta")
    assert browser.shown() == ["beta", "delta"]
    browser.clear(".f-search")
    assert len(browser.shown()) == 5

    assert browser.js("return document.getElementById('detail').hidden") is True
    browser.click(".scn tbody tr[data-status=error] td.err")
    panel = browser.text("#detail")
    assert browser.js("return document.getElementById('detail').hidden") is False
    assert "scenario gamma" in panel and "stderr tail" in panel
    assert "ValueError: bad gamma <b>" in panel  # shown as text, never as markup
    assert browser.js("return document.querySelector('#detail b')") is None
    assert "process exited with code 3" in panel and '"exit_code": 3' in panel
    assert browser.url.endswith("#scenario-2")
    browser.keys("\ue00c")  # Escape
    assert browser.js("return document.getElementById('detail').hidden") is True

    browser.click(".scn tbody tr[data-status=failed]")
    assert '"b": 2' in browser.text("#detail") and "scenario beta" in browser.text("#detail")
    browser.click("#detail-close")
    assert browser.js("return document.getElementById('detail').hidden") is True
    # a link to one scenario opens its details when the page loads
    browser.get("about:blank")
    browser.get(page.as_uri() + "#scenario-0")
    assert "scenario beta" in browser.text("#detail")


def test_written_diff_page_shows_both_sides(
    browser: Browser,
    dsn: str,
    runs: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`diff --html`: the change filter keeps one kind, and a row opens A's and B's outcome side by side."""
    a, b = runs
    page = tmp_path / "diff.html"
    assert cli.main(["diff", a, b, "--db", dsn, "--html", str(page), "--all"]) == 0
    capsys.readouterr()
    browser.get(page.as_uri())
    assert browser.shown() == ["alpha", "beta", "zeta", "epsilon", "delta", "gamma"]
    browser.click(".f-status option[value=regressed]")
    assert browser.shown() == ["alpha"]
    browser.click(".scn tbody tr[data-status=regressed]")
    panel = browser.text("#detail")
    assert f"A: {a}" in panel and f"B: {b}" in panel
    side_a, side_b = panel.split(f"B: {b}")
    assert "passed" in side_a and '"a": 1' in side_a
    assert "failed" in side_b and '"a": 0' in side_b
    browser.click(".f-status option[value=new]")
    browser.click(".scn tbody tr[data-status=new]")
    assert "no outcome in this run" in browser.text("#detail").split(f"B: {b}")[0]


def test_viewer_from_runs_to_a_run_an_outcome_and_a_diff(
    browser: Browser, viewer: Viewer, runs: tuple[str, str]
) -> None:
    """Browsing the viewer: runs -> a run -> an outcome's page; the compare form -> a diff whose
    rows link to each side's outcome."""
    a, b = runs
    browser.get(viewer.url)
    browser.click(f'a[href="/runs/{a}"]')
    browser.arrive(f"{viewer.url}runs/{a}")
    assert browser.shown() == ["beta", "epsilon", "gamma", "alpha", "delta"]
    browser.click(".scn thead th:nth-child(3)")  # score: numbers first, empty last
    assert browser.shown()[:3] == ["beta", "alpha", "delta"]
    browser.click('.scn a[href$="/scenarios/gamma"]')
    browser.arrive(f"{viewer.url}runs/{a}/scenarios/gamma")
    page = browser.text("body")
    assert (
        "scenario gamma" in page and "stderr tail" in page and "ValueError: bad gamma <b>" in page
    )
    assert '"exit_code": 3' in page and "ProcessExitError" in page
    browser.click("nav a:nth-child(2)")  # back to the run
    browser.arrive(f"{viewer.url}runs/{a}")

    browser.get(viewer.url)
    browser.click(f'input[name=a][value="{a}"]')
    browser.click(f'input[name=b][value="{b}"]')
    browser.click("form button[type=submit]")
    assert f"a={a}" in browser.arrive(f"{viewer.url}diff?", prefix=True)
    assert browser.shown() == ["alpha", "beta", "zeta", "epsilon"]
    assert "1 regressed · 1 fixed · 1 new · 1 missing · 2 unchanged" in browser.text("p.summary")
    browser.click(f'.scn a[href="/runs/{b}/scenarios/{quote("alpha")}"]')
    browser.arrive(f"{viewer.url}runs/{b}/scenarios/alpha")
    assert f"run {b}" in browser.text("body") and "failed" in browser.text("dl.fields")
    browser.cmd("POST", "/back", {})
    browser.arrive(f"{viewer.url}diff?", prefix=True)
    browser.click(f'.scn a[href="/runs/{a}/scenarios/alpha"]')
    browser.arrive(f"{viewer.url}runs/{a}/scenarios/alpha")
    assert "passed" in browser.text("dl.fields")
