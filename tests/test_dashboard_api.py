"""The dashboard's HTTP API: every endpoint, token and host checks, 404s, started documents, dashboard=True."""

from __future__ import annotations

import json
import time
import webbrowser
from collections.abc import Iterator
from typing import Any

import pytest
from support import install_hint, wait_until
from typer.testing import CliRunner

import fanflow

pytest.importorskip("fastapi", reason=install_hint("dashboard"))

import httpx
from fastapi.testclient import TestClient

from fanflow.cli.main import app as cli_app
from fanflow.dashboard.app import LOOPBACK_NAMES, DashboardError, check_bind, create_app, is_loopback
from fanflow.dashboard.source import Source
from fanflow.store import open_store
from fanflow.store.metadata import MetadataStore, drain, open_metadata

STORE = "memory://dashboard-api"


@fanflow.task
def make(i: int) -> bytes:
    return bytes(100 * (i + 1))


@fanflow.task
def size(data: bytes) -> int:
    return len(data)


@fanflow.task
def add(*xs: int) -> int:
    return sum(xs)


@fanflow.task
def nap(x: int) -> int:
    time.sleep(0.4)
    return x


@fanflow.task
def broken(x: int) -> int:
    raise KeyError(f"no key {x}")


@pytest.fixture(scope="module")
def metadata_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('dash-api') / 'metadata.db'}"


def _config(metadata_url: str, **extra: Any) -> fanflow.Config:
    return fanflow.Config(store=STORE, metadata=metadata_url, progress=False, **extra)


@pytest.fixture(scope="module")
def recorded(metadata_url: str) -> dict[str, str]:
    """One succeeded and one failed run, recorded."""
    fanflow.compute(add(*[size(make(i)) for i in range(3)]), config=_config(metadata_url))
    with pytest.raises(fanflow.TaskFailedError):
        fanflow.compute(broken(size(make(0))), config=_config(metadata_url))
    drain()
    runs = open_metadata(metadata_url).runs()
    return {r["status"]: r["run_id"] for r in runs}


@pytest.fixture(scope="module")
def client(metadata_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Source(open_store(STORE), open_metadata(metadata_url)))) as c:
        yield c


def test_health(client: TestClient, metadata_url: str) -> None:
    body = client.get("/api/health").json()
    assert body["ok"] and body["store"] == STORE and body["metadata"] == metadata_url


def test_index_and_static_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    for path in ("static/app.js", "static/app.css", "static/vendor/cytoscape/cytoscape.min.js"):
        assert client.get("/" + path).status_code == 200, path
    assert "http://" not in page.text and "https://" not in page.text


def test_runs_list_and_filters(client: TestClient, recorded: dict[str, str]) -> None:
    runs = client.get("/api/runs").json()["runs"]
    ids = [r["run_id"] for r in runs]
    assert recorded["succeeded"] in ids and recorded["failed"] in ids
    assert ids.index(recorded["failed"]) < ids.index(recorded["succeeded"])  # newest first
    ok = next(r for r in runs if r["run_id"] == recorded["succeeded"])
    assert ok["sink"] == "add" and ok["tasks"] == 7 and ok["tasks_finished"] == 7 and not ok["live"]
    assert ok["workflow"] == "make" and ok["platform"] == "threads"  # the first task's function, not the sink
    assert ok["makespan_s"] > 0 and "predicted_makespan_s" in ok and "cost" in ok and ok["planner"]

    only_failed = client.get("/api/runs", params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in only_failed] == [recorded["failed"]]
    by_name = client.get("/api/runs", params={"dag": "ADD"}).json()["runs"]
    assert {r["run_id"] for r in by_name} == {recorded["succeeded"]}
    by_sig = client.get("/api/runs", params={"signature": ok["signature"][:6]}).json()["runs"]
    assert recorded["succeeded"] in [r["run_id"] for r in by_sig]
    assert recorded["failed"] not in [r["run_id"] for r in by_sig]
    bad = client.get("/api/runs", params={"status": "sleeping"})
    assert bad.status_code == 400 and "unknown status" in bad.json()["detail"]


def test_recorded_run(client: TestClient, recorded: dict[str, str]) -> None:
    body = client.get(f"/api/runs/{recorded['succeeded']}").json()
    assert body["live"] is False and body["run"]["status"] == "succeeded"
    nodes, edges = body["graph"]["nodes"], body["graph"]["edges"]
    assert [n["function"] for n in nodes].count("size") == 3 and len(edges) == 6
    sink = next(n for n in nodes if n["function"] == "add")
    assert sink["sink"] and not sink["map"]
    path = body["critical_path"]
    assert path[-1] == sink["id"] and len(path) == 3
    assert [t["task"] for t in body["critical_tasks"]] == path and body["errors"] == []
    assert all(t["status"] == "finished" for t in body["critical_tasks"])
    assert body["functions"]["size"]["tasks"] == 3 and body["functions"]["size"]["in_bytes"] >= 600


def test_failed_run_keeps_its_traceback(client: TestClient, recorded: dict[str, str]) -> None:
    errors = client.get(f"/api/runs/{recorded['failed']}/errors").json()["errors"]
    assert len(errors) == 1
    err = errors[0]
    assert err["task"].startswith("broken") and err["exc_type"] == "builtins.KeyError"
    assert "Traceback" in err["traceback"] and "no key 100" in err["traceback"]


def test_events_of_a_recorded_run(client: TestClient, recorded: dict[str, str]) -> None:
    body = client.get(f"/api/runs/{recorded['succeeded']}/events").json()
    kinds = [e["kind"] for e in body["events"]]
    assert kinds.count("task_finished") == 7 and body["ended"] and body["status"] == "succeeded"
    rest = client.get(f"/api/runs/{recorded['succeeded']}/events", params={"after": body["last"]}).json()
    assert rest["events"] == []
    tail = client.get(f"/api/runs/{recorded['succeeded']}/events", params={"after": "3"}).json()
    assert tail["events"] == body["events"][3:]
    pages, after = [], "0"
    while True:  # the page reads a big run in pieces
        page = client.get(f"/api/runs/{recorded['succeeded']}/events", params={"after": after, "limit": 4}).json()
        pages.append(page["events"])
        after = page["last"]
        if not page["more"]:
            break
    assert [e for p in pages for e in p] == body["events"] and all(len(p) <= 4 for p in pages) and len(pages) > 1


def test_stream_of_a_recorded_run_ends_at_once(client: TestClient, recorded: dict[str, str]) -> None:
    with client.stream("GET", f"/api/runs/{recorded['failed']}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert "event: end" in text and '"status": "failed"' in text


def _sse(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_live_run_is_listed_and_streamed(client: TestClient, metadata_url: str) -> None:
    future = fanflow.submit(add(nap(nap(1)), nap(2)), config=_config(metadata_url, metrics_upload="task"))
    run_id = wait_until(lambda: future.run_id, 5, "the run to start")

    def running() -> dict[str, Any]:
        return {r["run_id"]: r for r in client.get("/api/runs", params={"status": "running"}).json()["runs"]}

    # the started document is written by the background writer
    listed = wait_until(lambda: run_id in running() and running(), 5, "the run to be listed as running")
    assert listed[run_id]["live"] and listed[run_id]["status"] == "running"
    live = client.get(f"/api/runs/{run_id}").json()
    assert live["live"] and live["notice"] is None
    assert sorted(n["function"] for n in live["graph"]["nodes"]) == ["add", "nap", "nap", "nap"]
    with client.stream("GET", f"/api/runs/{run_id}/stream") as response:
        messages = _sse(response.read().decode())
    kinds = [k for k, _ in messages]
    assert kinds[-1] == "end" and messages[-1][1]["status"] == "succeeded"
    # the first level's events are in the stream while the second level runs; the page reloads the rest at "end"
    streamed = [e for k, d in messages if k == "events" for e in d["events"]]
    assert any(e["kind"] == "task_finished" for e in streamed), messages
    assert future.result(timeout=10) == (3,)


@pytest.mark.parametrize("suffix", ["", "/events", "/errors", "/stream"])
def test_unknown_run_is_a_clear_404(client: TestClient, suffix: str) -> None:
    response = client.get(f"/api/runs/no-such-run{suffix}")
    assert response.status_code == 404
    assert "'no-such-run' is unknown" in response.json()["detail"]


def test_functions_and_executions(client: TestClient, recorded: dict[str, str]) -> None:
    functions = {f["name"]: f for f in client.get("/api/functions").json()["functions"]}
    assert {"make", "size", "add"} <= set(functions)
    identity = functions["size"]["identity"]
    assert functions["size"]["sizes"][0]["count"] >= 3
    points = client.get("/api/functions/executions", params={"identity": identity}).json()["executions"]
    assert len(points) >= 3 and {"exec_s", "in_bytes", "memory_mb"} <= set(points[0])
    assert {p["in_bytes"] for p in points} >= {100, 200, 300}
    assert recorded["succeeded"] in {p["run_id"] for p in points}  # the functions page links to the runs
    missing = client.get("/api/functions/executions", params={"identity": "nope:123"})
    assert missing.status_code == 404 and "no recorded executions" in missing.json()["detail"]


def test_token_is_required_on_every_request(metadata_url: str) -> None:
    app = create_app(Source(open_store(STORE), open_metadata(metadata_url)), token="s3cret")
    with TestClient(app) as c:
        for path in ("/", "/api/runs", "/static/app.js", "/api/functions"):
            denied = c.get(path)
            assert denied.status_code == 401 and "token" in denied.json()["detail"], path
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/runs", headers={"X-Fanflow-Token": "s3cret"}).status_code == 200
        opened = c.get("/", params={"token": "s3cret"})
        assert opened.status_code == 200 and "fanflow_token" in opened.headers["set-cookie"]
        assert "httponly" in opened.headers["set-cookie"].lower()
        assert c.get("/static/app.js").status_code == 200  # the cookie set above carries the token


def test_loopback_server_checks_the_host_header(metadata_url: str) -> None:
    app = create_app(Source(open_store(STORE), open_metadata(metadata_url)), allowed_hosts=LOOPBACK_NAMES)
    with TestClient(app, base_url="http://evil.example") as c:
        rebound = c.get("/api/runs")
        assert rebound.status_code == 400 and "not served here" in rebound.json()["detail"]
    with TestClient(app, base_url="http://127.0.0.1:8787") as c:
        assert c.get("/api/runs").status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(DashboardError, match="--token"):
        check_bind("0.0.0.0", None)
    result = CliRunner().invoke(cli_app, ["dashboard", "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "--token" in result.output


def _store_contract(store: MetadataStore) -> None:
    doc = {"run_id": "r-live", "submitted_at": time.time(), "sink": "s", "deps": [[]], "errors": []}
    store.save_started(doc, ttl_s=60)
    store.save_started({**doc, "run_id": "r-old", "submitted_at": doc["submitted_at"] - 5}, ttl_s=60)
    assert [d["run_id"] for d in store.started_runs() if d["run_id"].startswith("r-")] == ["r-live", "r-old"]
    assert store.load_started("r-live") == doc and store.load_started("r-none") is None
    store.save_started({**doc, "errors": [{"message": "x"}]}, ttl_s=60)
    assert store.load_started("r-live")["errors"] == [{"message": "x"}]


def test_started_documents_in_sqlite(tmp_path: Any) -> None:
    store = open_metadata(f"sqlite:///{tmp_path / 'm.db'}")
    _store_contract(store)
    store.save_started({"run_id": "r-gone", "submitted_at": 1.0}, ttl_s=0)
    time.sleep(0.01)
    assert store.load_started("r-gone") is None


def test_started_documents_in_redis(redis_url: str) -> None:
    _store_contract(open_metadata(redis_url.rsplit("/", 1)[0] + "/3"))


def test_compute_with_dashboard_opens_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], metadata_url: str
) -> None:
    opened: list[str] = []

    def no_browser(url: str) -> bool:
        opened.append(url)
        raise webbrowser.Error("no browser here")  # must never fail the run

    monkeypatch.setattr(webbrowser, "open", no_browser)
    values = fanflow.compute(add(size(make(1)), size(make(2))), config=_config("none"), dashboard=True)
    assert values == (500,)
    (url,) = opened
    assert f"fanflow dashboard: {url}" in capsys.readouterr().err
    base, run_id = url.split("#/run/")
    assert base.startswith("http://127.0.0.1:")
    body = httpx.get(f"{base}api/runs/{run_id}").json()  # metadata "none": known from this process alone
    assert body["run"]["status"] == "succeeded" and len(body["graph"]["nodes"]) == 5

    future = fanflow.submit(add(size(make(3))), config=_config(metadata_url), dashboard=True)
    assert future.result(timeout=10) == (400,)
    assert opened[-1].startswith(base) and opened[-1].endswith(future.run_id)
    assert httpx.get(f"{base}api/runs").status_code == 200


def test_a_dashboard_without_the_runs_secret_shows_it_live(redis_url: str, tmp_path: Any) -> None:
    """The dashboard reads a run's status, events and error records, none of them sealed: it needs no secret.

    Only pickled values (inputs, outputs, the DAG) are sealed with the secret, and
    the dashboard opens the run store without one. Here its store holds another
    secret, so reading any sealed value would raise ValueRejectedError.
    """
    metadata = f"sqlite:///{tmp_path / 'metadata.db'}"
    config = fanflow.Config(store=redis_url, metadata=metadata, progress=False, secret="k" * 32, metrics_upload="task")
    future = fanflow.submit(broken(nap(nap(1))), config=config)
    run_id = wait_until(lambda: future.run_id, 5, "the run to start")
    store = open_store(redis_url, secret=b"not the run's secret")
    with TestClient(create_app(Source(store, open_metadata(metadata)))) as dashboard:
        page = wait_until(lambda: (r := dashboard.get(f"/api/runs/{run_id}")).status_code == 200 and r.json(), 5, "")
        assert page["live"] and page["notice"] is None  # it reads the run's store
        with dashboard.stream("GET", f"/api/runs/{run_id}/stream") as response:
            messages = _sse(response.read().decode())
        errors = dashboard.get(f"/api/runs/{run_id}/errors").json()
    assert messages[-1] == ("end", messages[-1][1]) and messages[-1][1]["status"] == "failed"
    events = [e for kind, data in messages if kind == "events" for e in data["events"]]
    assert sum(e["kind"] == "task_finished" for e in events) >= 1, messages
    assert "KeyError" in json.dumps(errors)
    with pytest.raises(fanflow.TaskFailedError):
        future.result(timeout=10)
