"""End-to-end tests of the dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright).

A slow-ish run (tasks that sleep, ``metrics_upload="task"`` so events stream
as tasks finish) is watched live: its sink is seen waiting, then some task
running, then everything done, all pushed by server-sent events. The finished
run is then replayed with the slider and the play button. The page must load
nothing but the local server. Screenshots land in ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fanflow

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install playwright"
)
uvicorn = pytest.importorskip("uvicorn", reason="the dashboard extra is not installed")

from fanflow.dashboard.app import LOOPBACK_NAMES, create_app  # noqa: E402
from fanflow.dashboard.source import Source  # noqa: E402
from fanflow.store import open_store  # noqa: E402
from fanflow.store.metadata import drain, open_metadata  # noqa: E402

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found (apt-get install chromium)")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STORE = "memory://dashboard-browser"


@fanflow.task
def load(i: int) -> bytes:
    time.sleep(0.5)
    return bytes(1000 * (i + 1))


@fanflow.task
def measure(data: bytes) -> int:
    time.sleep(0.4)
    return len(data)


@fanflow.task
def total(*sizes: int) -> int:
    time.sleep(0.3)
    return sum(sizes)


@fanflow.task
def explode(n: int) -> int:
    raise ValueError(f"cannot handle {n}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def metadata_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('dash') / 'metadata.db'}"


@pytest.fixture(scope="module")
def server(metadata_url: str) -> Iterator[str]:
    """The dashboard on a free loopback port, reading the test's stores."""
    app = create_app(Source(open_store(STORE), open_metadata(metadata_url)), allowed_hosts=LOOPBACK_NAMES)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the dashboard server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    """A page that records every URL it requests (checked to be local when the test ends)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    pg = context.new_page()
    requested: list[str] = []
    pg.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    foreign = [u for u in requested if not u.startswith(server) and not u.startswith("data:")]
    assert not foreign, f"the page requested resources outside the local server: {foreign}"
    assert not errors, f"JavaScript errors on the page: {errors}"


def _config(metadata_url: str) -> fanflow.Config:
    return fanflow.Config(store=STORE, platform="threads", metadata=metadata_url, progress=False, metrics_upload="task")


def _states(page: Any) -> dict[str, str]:
    return page.evaluate("window.fanflowDashboard.nodeStates()")


def test_live_run_then_replay(page: Any, server: str, metadata_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(server)
    page.wait_for_selector("#runs")

    sink = total(*[measure(load(i)) for i in range(4)])
    future = fanflow.submit(sink, config=_config(metadata_url))
    deadline = time.monotonic() + 5
    while not future.run_id:
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.01)
    run_id = future.run_id

    page.goto(f"{server}#/run/{run_id}")
    page.wait_for_function("Object.keys(window.fanflowDashboard.nodeStates()).length === 9")
    first = _states(page)
    sink_name = next(name for name in first if name.startswith("total"))
    assert first[sink_name] == "waiting", first
    assert page.evaluate("window.fanflowDashboard.isLive()")

    page.wait_for_function("Object.values(window.fanflowDashboard.nodeStates()).includes('running')", timeout=10_000)
    page.wait_for_function(
        "Object.values(window.fanflowDashboard.nodeStates()).some(s => s === 'done')", timeout=10_000
    )
    page.wait_for_timeout(300)  # let the canvas repaint
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert "tasks done" in page.inner_text("#progress-text")

    assert future.result(timeout=30) == (10_000,)
    # the stream ends once the run is recorded; the page becomes the finished run with its replay
    page.wait_for_selector("#replay-slider", timeout=20_000)
    assert not page.evaluate("window.fanflowDashboard.isLive()")
    assert set(_states(page).values()) == {"done"}
    assert page.inner_text("#run-status") == "succeeded"
    assert page.is_visible("#critical")

    slider = page.locator("#replay-slider")
    slider.fill("0")
    at_submit = _states(page)
    assert "done" not in at_submit.values() and at_submit[sink_name] == "waiting", at_submit
    slider.fill("600")
    middle = set(_states(page).values())
    assert "done" in middle and middle != {"done"}, middle

    page.select_option("#replay-speed", "auto")
    slider.fill("0")
    page.click("#replay-play")
    page.wait_for_function("Object.values(window.fanflowDashboard.nodeStates()).includes('running')", timeout=10_000)
    page.wait_for_function(
        "Object.values(window.fanflowDashboard.nodeStates()).every(s => s === 'done')", timeout=20_000
    )
    page.wait_for_function("document.querySelector('#replay-play').textContent.includes('Play')")  # stops at the end
    page.click("button[data-mode=worker]")
    page.wait_for_timeout(300)  # let the canvas repaint
    page.screenshot(path=str(ARTIFACTS / "dashboard-replay.png"), full_page=True)


def test_failed_run_shows_traceback(page: Any, server: str, metadata_url: str) -> None:
    with pytest.raises(fanflow.TaskFailedError):
        fanflow.compute(explode(measure(load(0))), config=_config(metadata_url))
    drain()
    run_id = open_metadata(metadata_url).runs(limit=1)[0]["run_id"]
    page.goto(f"{server}#/run/{run_id}")
    page.wait_for_selector("#errors .error")
    text = page.inner_text("#errors")
    assert "cannot handle 1000" in text and "Traceback" in text
    assert page.inner_text("#run-status") == "failed"
    assert "failed" in _states(page).values()


def test_history_and_functions_pages(page: Any, server: str, metadata_url: str) -> None:
    fanflow.compute(total(measure(load(1))), config=_config(metadata_url))
    drain()
    page.goto(f"{server}#/?status=succeeded")
    page.wait_for_selector("#runs tbody tr[data-run]")
    rows = page.locator("#runs tbody tr[data-run]")
    assert rows.count() >= 1
    assert "failed" not in page.inner_text("#runs tbody")
    page.fill("input[placeholder='DAG name']", "no-such-dag")
    page.wait_for_selector("#runs .empty")
    page.goto(f"{server}#/functions")
    page.wait_for_selector(".fn img")
    page.wait_for_function("[...document.querySelectorAll('.fn img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "measure" in page.inner_text("#view")
    page.screenshot(path=str(ARTIFACTS / "dashboard-functions.png"), full_page=True)
