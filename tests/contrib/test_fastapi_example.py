"""examples/fastapi_sse served by a real uvicorn process on the test schema: a POST
queues a track, and its event stream shows the job start, report increasing progress and
complete, in that order; the page and the JSON endpoints answer as documented."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from browser.server import serve_example
from conftest import eventually

from kerrera import Kerrera


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(kind, data) for each event of a server-sent event body (comments skipped)."""
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data += line.removeprefix("data:").strip()
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


async def _media_paused(admin: Kerrera, paused: bool) -> bool:
    queues = await admin.check_all_queues()
    return any(q["queue"] == "media" and q["paused"] is paused for q in queues)


async def test_post_a_track_then_stream_its_progress_to_completion(
    dsn: str, prefix: str, make_app: Callable[..., Kerrera]
) -> None:
    admin = make_app()  # manages the example's queue from outside, as an operator would
    with serve_example(dsn, prefix, step=0.3) as server:
        # Hold the queue so that the stream is open before the job starts: then every
        # event of the run, `started` included, reaches it.
        await admin.pause_queue("media")
        await eventually(lambda: _media_paused(admin, True))
        async with httpx.AsyncClient(base_url=server.url(), timeout=30) as client:
            created = await client.post("/tracks", data={"title": "Blue in Green"})
            assert created.status_code == 201, created.text
            track = created.json()
            assert track["title"] == "Blue in Green"
            assert track["events"] == f"/tracks/{track['id']}/events"
            got: list[tuple[str, dict[str, Any]]] = []
            async with client.stream("GET", track["events"]) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for kind, data in _events(response):
                    got.append((kind, data))
                    if kind == "snapshot":
                        await admin.resume_queue("media")
            stored = (await client.get(f"/tracks/{track['id']}")).json()
    kinds = [kind for kind, _ in got]
    assert kinds[:2] == ["snapshot", "started"], kinds
    assert got[0][1]["state"] == "available"
    assert set(kinds[2:-1]) == {"progress"} and kinds[-1] == "completed", kinds
    percents = [data["progress"]["percent"] for kind, data in got if kind == "progress"]
    assert percents == sorted(set(percents)) and percents[0] == 0 and percents[-1] == 100
    assert got[-1][1]["finished"] is True
    assert {data["job_id"] for _, data in got} == {track["id"]}
    assert stored["state"] == "completed" and stored["progress"]["percent"] == 100


async def test_the_page_the_json_body_and_a_finished_or_missing_job(dsn: str, prefix: str) -> None:
    with serve_example(dsn, prefix, step=0.05) as server:
        async with httpx.AsyncClient(base_url=server.url(), timeout=30) as client:
            page = await client.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "EventSource" in page.text and 'id="separate"' in page.text
            track = (await client.post("/tracks", json={"title": "So What"})).json()
            assert track["title"] == "So What"

            async def finished() -> bool:
                stored = await client.get(f"/tracks/{track['id']}")
                return bool(stored.json()["state"] == "completed")

            await eventually(finished)
            # A finished job's stream is its snapshot alone, then the end.
            async with client.stream("GET", track["events"]) as response:
                late = [event async for event in _events(response)]
            assert [kind for kind, _ in late] == ["snapshot"]
            assert late[0][1]["state"] == "completed" and late[0][1]["finished"] is True
            assert (await client.get("/tracks/424242/events")).status_code == 404
            assert (await client.get("/tracks/424242")).status_code == 404
            bad = await client.post(
                "/tracks", content=b"{", headers={"content-type": "application/json"}
            )
            assert bad.status_code == 400
