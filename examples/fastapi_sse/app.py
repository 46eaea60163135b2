"""A FastAPI app that hands slow work to Kerrera and shows its progress live.

`POST /tracks` queues a stem separation and answers at once with the job id;
`GET /tracks/{id}/events` streams that job's progress as server-sent events; `GET /`
is a page that does both and draws a progress bar. The app runs the `media` queue in
its own process, started and stopped with it.

Run it (from the repository root; see README.md):
    KERRERA_DATABASE_URL=postgresql://localhost/mydb uvicorn examples.fastapi_sse.app:app
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response

from kerrera import Kerrera
from kerrera.contrib.starlette import event_response, get_kerrera, kerrera_lifespan

try:
    from .jobs import SeparateStems
except ImportError:  # started from inside this folder: `uvicorn app:app`
    from jobs import SeparateStems

PAGE = Path(__file__).parent / "static" / "index.html"


def build_kerrera() -> Kerrera:
    """This process's Kerrera: the database from `KERRERA_DATABASE_URL` (an embedded
    PostgreSQL when unset), its tables in the `KERRERA_PREFIX` schema ("public")."""
    return Kerrera(
        queues={"media": 2},
        prefix=os.environ.get("KERRERA_PREFIX", "public"),
        shutdown_grace_period=5,
    )


app = FastAPI(title="Kerrera stems", lifespan=kerrera_lifespan(build_kerrera))
KerreraDep = Annotated[Kerrera, Depends(get_kerrera)]


@app.get("/", include_in_schema=False)
async def page() -> FileResponse:
    """The upload page."""
    return FileResponse(PAGE, media_type="text/html")


@app.post("/tracks", status_code=201)
async def create_track(request: Request, kerrera: KerreraDep) -> dict[str, Any]:
    """Queue the separation of a track; the body is a form or JSON with a `title`."""
    title = await _title(request)
    job = await kerrera.insert(SeparateStems.new({"title": title}))
    return {"id": job.id, "title": title, "events": f"/tracks/{job.id}/events"}


@app.get("/tracks/{job_id}/events")
async def track_events(job_id: int, kerrera: KerreraDep) -> Response:
    """The job's progress as server-sent events, ending with its outcome."""
    return await event_response(kerrera, job_id)


@app.get("/tracks/{job_id}")
async def show_track(job_id: int, kerrera: KerreraDep) -> dict[str, Any]:
    """The job as stored now (for clients that poll instead of streaming)."""
    job = await kerrera.get_job(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no track job {job_id}")
    return {"id": job.id, "state": str(job.state), "progress": job.meta.get("progress")}


async def _title(request: Request) -> str:
    """The `title` of a JSON or URL-encoded form body (parsed by hand, so that the example
    needs no python-multipart)."""
    raw = (await request.body()).decode("utf-8", "replace")
    title: Any = None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(raw or "{}")
        except ValueError:
            raise HTTPException(status_code=400, detail="the body is not JSON") from None
        title = body.get("title") if isinstance(body, dict) else None
    else:
        title = (parse_qs(raw).get("title") or [None])[0]
    return str(title or "Untitled track").strip()[:200] or "Untitled track"
