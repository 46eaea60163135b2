"""Kerrera in a Starlette or FastAPI application: start and stop it with the app, reach it
from request handlers, and stream a job's live progress to a browser as server-sent
events.

Needs Starlette (FastAPI includes it): `pip install 'kerrera[starlette]'`.

Example (docs/web.md has more; examples/fastapi_sse is a runnable app):
    from fastapi import Depends, FastAPI
    from kerrera import Kerrera
    from kerrera.contrib.starlette import event_response, get_kerrera, kerrera_lifespan

    api = FastAPI(lifespan=kerrera_lifespan(lambda: Kerrera(queues={"media": 2})))
    KerreraDep = Annotated[Kerrera, Depends(get_kerrera)]

    @api.post("/tracks")
    async def create(kerrera: KerreraDep) -> dict[str, int | None]:
        job = await kerrera.insert(separate_stems.new({"track_id": 7}))
        return {"id": job.id}

    @api.get("/tracks/{job_id}/events")
    async def events(job_id: int, kerrera: KerreraDep) -> Response:
        return await event_response(kerrera, job_id)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import StreamingResponse

from kerrera import Event, Kerrera, Subscription

__all__ = [
    "KEEPALIVE",
    "SSE_HEADERS",
    "event_response",
    "event_stream",
    "format_event",
    "get_kerrera",
    "kerrera_lifespan",
]

#: What `kerrera_lifespan` composes with: Starlette's own lifespan form, a function of
#: the application returning an async context manager (which may yield a state mapping).
Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]

#: Seconds between keep-alive comments on an idle event stream. Proxies and load
#: balancers commonly cut connections that stay silent for 30-60 s.
KEEPALIVE = 15.0

#: Headers of an event stream. `X-Accel-Buffering: no` stops nginx from buffering the
#: stream, which would otherwise deliver every event at once when the job ends.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def kerrera_lifespan(
    kerrera: Kerrera | Callable[[], Kerrera],
    lifespan: Lifespan | None = None,
    *,
    grace: float | None = None,
) -> Lifespan:
    """A lifespan that starts Kerrera when the application starts and stops it (draining
    running jobs for up to `grace` seconds, default its `shutdown_grace_period`) when
    the application shuts down. The instance is kept on `app.state.kerrera`.

    `kerrera` is an instance or a function that builds one; a function builds a fresh
    instance each time the application starts, which suits tests that start an app more
    than once. `lifespan` is your own lifespan, run inside this one: Kerrera is already
    running during its startup (so it may insert jobs) and still running during its
    shutdown. Whatever it yields (Starlette's lifespan state) is passed on.

    Example:
        @asynccontextmanager
        async def warm_caches(app: FastAPI) -> AsyncIterator[None]:
            await app.state.kerrera.insert(warm.new({}))
            yield

        api = FastAPI(lifespan=kerrera_lifespan(Kerrera(queues={"default": 10}), warm_caches))
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        instance = kerrera if isinstance(kerrera, Kerrera) else kerrera()
        try:
            await instance.start()
        except Exception:
            await instance.stop(grace=0)  # close what the failed start had opened
            raise
        app.state.kerrera = instance
        try:
            inner = lifespan(app) if lifespan is not None else nullcontext(None)
            async with inner as state:
                yield state
        finally:
            await instance.stop(grace)

    return run


def get_kerrera(conn: HTTPConnection) -> Kerrera:
    """The application's Kerrera instance (set by `kerrera_lifespan`), for a request or a
    websocket. It is a FastAPI dependency as it stands, and a plain function in Starlette.

    Example:
        @api.get("/jobs/{job_id}")
        async def show(job_id: int, kerrera: Annotated[Kerrera, Depends(get_kerrera)]) -> dict:
            job = await kerrera.get_job(job_id)
            return {"state": str(job.state)} if job else {}
    """
    instance = getattr(conn.app.state, "kerrera", None)
    if not isinstance(instance, Kerrera):
        raise RuntimeError(
            "no Kerrera on this application: build it with "
            "lifespan=kerrera_lifespan(...) (kerrera.contrib.starlette)"
        )
    return instance


def format_event(event: Event) -> str:
    """One `Event` as a server-sent event: `event: <kind>` and a line of JSON data with
    every field of the event and `finished`.

    Example: `format_event(Event(kind="progress", job_id=7, progress={"percent": 50}))`
    starts with `event: progress\\ndata: {"kind":"progress","job_id":7,`.
    """
    data = dataclasses.asdict(event)
    data["finished"] = event.finished
    # Compact JSON never contains a newline, which would end the SSE data field.
    text = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event.kind}\ndata: {text}\n\n"


async def event_stream(
    kerrera: Kerrera, job_id: int, *, keepalive: float = KEEPALIVE
) -> AsyncIterator[str]:
    """The events of job `job_id` as server-sent event chunks: first a `snapshot` (its
    state and latest progress), then each event as it happens, ending after the job's
    last one (completed, failed or cancelled). A comment line is sent after `keepalive`
    idle seconds so that proxies keep the connection open.

    Closing the iterator (Starlette does when the client goes away) closes the
    subscription. A job that does not exist yields only keep-alives: check first, as
    `event_response` does.

    Example:
        async for chunk in event_stream(app, job.id):
            print(chunk, end="")  # "event: snapshot\\ndata: {...}\\n\\n" ...
    """
    subscription = kerrera.subscribe(job_id)
    pending: asyncio.Task[Event | None] | None = None
    try:
        await subscription.open()
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(subscription))
            # Wait on the same pending step across keep-alives rather than cancelling
            # and restarting it, so an event arriving at a timeout is never lost.
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield ": keep-alive\n\n"
                continue
            event, pending = pending.result(), None
            if event is None:  # the subscription was closed (Kerrera is stopping)
                return
            yield format_event(event)
            if event.finished:
                return
    finally:
        # Synchronous on purpose: this runs under cancellation when the client leaves,
        # where a further await could be cancelled again before the cleanup is done.
        if pending is not None:
            pending.cancel()
        subscription.close()


async def _next(subscription: Subscription) -> Event | None:
    try:
        return await anext(subscription)
    except StopAsyncIteration:
        return None


async def event_response(
    kerrera: Kerrera,
    job_id: int,
    *,
    keepalive: float = KEEPALIVE,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    """A `text/event-stream` response streaming `event_stream(kerrera, job_id)`, or an
    `HTTPException(404)` when there is no such job.

    In the browser, `new EventSource(url)` receives each event under its kind; call
    `source.close()` on the `finished` one, or the browser reconnects to the ended stream
    (and receives a finished snapshot again) every few seconds.

    Example:
        @api.get("/tracks/{job_id}/events")
        async def events(job_id: int, kerrera: KerreraDep) -> Response:
            return await event_response(kerrera, job_id)
    """
    if await kerrera.get_job(job_id) is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id}")
    return StreamingResponse(
        event_stream(kerrera, job_id, keepalive=keepalive),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **(headers or {})},
    )
