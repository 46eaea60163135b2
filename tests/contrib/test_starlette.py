"""kerrera.contrib.starlette with the real frameworks: the lifespan starts and stops
Kerrera with a FastAPI or Starlette app, and job events stream as server-sent events
from a real uvicorn server, closing their subscription however the stream ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import psycopg
import pytest
import uvicorn
from conftest import eventually
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import scripted

from kerrera import ConfigError, Job, Kerrera, Subscription, worker
from kerrera.contrib.starlette import event_response, get_kerrera, kerrera_lifespan

KerreraDep = Annotated[Kerrera, Depends(get_kerrera)]


@worker(queue="default", max_attempts=1)
async def greet(job: Job) -> None:
    """Completes at once."""


@worker(queue="default", max_attempts=1)
async def stepper(job: Job) -> None:
    """Waits for its gate, then reports `steps` progresses."""
    await scripted.gate(job.args["key"]).wait()
    steps = int(job.args["steps"])
    for i in range(1, steps + 1):
        await job.progress(100 * i / steps, f"step {i}")


def _producers(sql: Callable[..., list[tuple[Any, ...]]], node: str) -> int:
    return int(sql("SELECT count(*) FROM kerrera_producers WHERE node = %s", (node,))[0][0])


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn (lifespan on) on a free port in this event loop; yield its
    base URL; shut the server down (running the app's lifespan shutdown) on exit."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), timeout=30)
    assert server.started, "uvicorn did not start (see the log)"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_fastapi_lifespan_starts_kerrera_and_stops_it_on_shutdown(
    dsn: str, prefix: str, sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    built: list[Kerrera] = []

    def build() -> Kerrera:
        built.append(Kerrera(dsn, prefix=prefix, queues={"default": 2}, node="web-1"))
        return built[-1]

    api = FastAPI(lifespan=kerrera_lifespan(build, grace=1))

    @api.post("/greetings")
    async def create(kerrera: KerreraDep) -> dict[str, Any]:
        return {"id": (await kerrera.insert(greet.new({"to": "you"}))).id}

    @api.get("/greetings/{job_id}")
    async def show(job_id: int, kerrera: KerreraDep) -> dict[str, Any]:
        job = await kerrera.get_job(job_id)
        return {"state": str(job.state) if job else None}

    async with serving(api) as url, httpx.AsyncClient(base_url=url) as client:
        assert len(built) == 1 and api.state.kerrera is built[0]
        assert built[0].check_queue("default")["limit"] == 2
        assert _producers(sql, "web-1") == 1  # heartbeating as a node
        job_id = (await client.post("/greetings")).json()["id"]

        async def completed() -> bool:
            response = await client.get(f"/greetings/{job_id}")
            return bool(response.json()["state"] == "completed")

        await eventually(completed)

    with pytest.raises(ConfigError, match="not running"):
        built[0].check_queue("default")
    assert _producers(sql, "web-1") == 0  # a clean stop removes the node's producers

    async with serving(api):  # a factory builds a fresh instance for each startup
        assert len(built) == 2 and api.state.kerrera is built[1]


async def test_starlette_lifespan_runs_the_apps_own_lifespan_inside(dsn: str, prefix: str) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        job = await app.state.kerrera.insert(greet.new({"to": "startup"}))
        seen.append("startup")
        yield {"startup_job": job.id}
        app.state.kerrera.check_queue("default")  # still running during our shutdown
        seen.append("shutdown")

    async def show(request: Request) -> Response:
        job = await get_kerrera(request).get_job(request.state.startup_job)
        return JSONResponse({"state": str(job.state) if job else None})

    kerrera = Kerrera(dsn, prefix=prefix, queues={"default": 1})
    app = Starlette(routes=[Route("/startup-job", show)], lifespan=kerrera_lifespan(kerrera, own))
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:

        async def completed() -> bool:
            return bool((await client.get("/startup-job")).json()["state"] == "completed")

        await eventually(completed)
    assert seen == ["startup", "shutdown"]
    with pytest.raises(ConfigError, match="not running"):
        kerrera.check_queue("default")


async def test_a_kerrera_that_cannot_start_fails_the_startup(prefix: str) -> None:
    kerrera = Kerrera("postgresql://postgres@127.0.0.1:1/nothing", prefix=prefix)
    app = Starlette(lifespan=kerrera_lifespan(kerrera))
    with pytest.raises(psycopg.OperationalError):
        async with app.router.lifespan_context(app):
            pass
    assert not hasattr(app.state, "kerrera")


def test_get_kerrera_without_the_lifespan_says_what_to_do() -> None:
    request = Request({"type": "http", "app": Starlette(), "headers": []})
    with pytest.raises(RuntimeError, match="kerrera_lifespan"):
        get_kerrera(request)


# -- server-sent events from a real uvicorn server ----------------------------------------


@pytest.fixture
async def served(make_app: Callable[..., Kerrera]) -> AsyncIterator[tuple[str, Kerrera]]:
    """A Starlette app streaming job events, served by uvicorn; yields the base URL and
    the Kerrera instance, whose subscriptions are recorded in `kerrera.opened`."""
    kerrera = make_app(queues={"default": 2})
    _record_subscriptions(kerrera)

    async def events(request: Request) -> Response:
        keepalive = float(request.query_params.get("keepalive", 15))
        job_id = request.path_params["job_id"]
        return await event_response(get_kerrera(request), job_id, keepalive=keepalive)

    app = Starlette(
        routes=[Route("/jobs/{job_id:int}/events", events)], lifespan=kerrera_lifespan(kerrera)
    )
    async with serving(app) as url:
        yield url, kerrera


def _record_subscriptions(kerrera: Kerrera) -> None:
    opened: list[Subscription] = []
    subscribe = kerrera.subscribe

    def recording(*targets: int | str) -> Subscription:
        opened.append(subscribe(*targets))
        return opened[-1]

    kerrera.subscribe = recording  # type: ignore[method-assign]
    kerrera.opened = opened  # type: ignore[attr-defined]


async def _read_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(kind, data) for each event of an SSE body, and ("comment", text) for comments."""
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


async def test_a_jobs_events_stream_in_order_and_the_stream_ends_with_it(
    served: tuple[str, Kerrera],
) -> None:
    url, kerrera = served
    job = await kerrera.insert(stepper.new({"key": "go", "steps": 4}))
    got: list[tuple[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", f"/jobs/{job.id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            async for kind, data in _read_events(response):
                got.append((kind, data))
                if kind == "snapshot":
                    scripted.gate("go").set()  # subscribed: now let it run
        # The server ended the stream after the outcome; the subscription is closed.
        missing = await client.get("/jobs/999999/events")
    kinds = [kind for kind, _ in got]
    assert kinds[0] == "snapshot" and kinds[-1] == "completed", kinds
    assert {data["job_id"] for _, data in got} == {job.id}
    percents = [data["progress"]["percent"] for kind, data in got if kind == "progress"]
    assert percents == sorted(set(percents)) and percents[-1] == 100, percents
    assert got[-1][1]["finished"] is True and got[-1][1]["state"] == "completed"
    assert missing.status_code == 404
    assert [s.closed for s in kerrera.opened] == [True]  # type: ignore[attr-defined]


async def test_an_idle_stream_keeps_alive_and_a_leaving_client_closes_it(
    served: tuple[str, Kerrera],
) -> None:
    url, kerrera = served
    job = await kerrera.insert(greet.new({}, queue="elsewhere"))  # no node runs it
    seen: list[tuple[str, Any]] = []
    address = f"/jobs/{job.id}/events?keepalive=0.1"
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("GET", address) as response,
    ):
        async for kind, data in _read_events(response):
            seen.append((kind, data))
            if len([k for k, _ in seen if k == "comment"]) == 2:
                break
        opened = kerrera.opened  # type: ignore[attr-defined]
        assert len(opened) == 1 and not opened[0].closed
    # Leaving the block closed the connection mid-stream.
    assert seen[0][0] == "snapshot" and seen[0][1]["state"] == "available"
    assert seen[1:] == [("comment", "keep-alive"), ("comment", "keep-alive")]
    await eventually(lambda: opened[0].closed)


def test_the_stream_helpers_are_documented() -> None:
    import kerrera.contrib.starlette as module

    for name in ("kerrera_lifespan", "get_kerrera", "event_stream", "event_response"):
        doc = getattr(module, name).__doc__
        assert doc and "Example" in doc, name
