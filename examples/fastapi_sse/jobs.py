"""The example's worker: one step of a media pipeline that reports its progress.

Separating a track into stems is slow work that must not run inside a web request, and
the person who uploaded the track wants to watch it happen. Here the real work is faked
with short sleeps (`KERRERA_EXAMPLE_STEP` seconds each, 0.8 by default).
"""

from __future__ import annotations

import asyncio
import os

from kerrera import Job, Record, Worker

STEPS = (
    ("decode", "decoding the upload"),
    ("vocals", "separating vocals"),
    ("drums", "separating drums"),
    ("bass", "separating bass"),
    ("other", "separating the rest"),
    ("mixdown", "writing the stems"),
)


class SeparateStems(Worker, queue="media", max_attempts=3):
    """Split a track into stems, reporting each step's percentage as it goes.

    Example: `await app.insert(SeparateStems.new({"title": "Demo track"}))`.
    """

    async def process(self, job: Job) -> Record:
        pause = float(os.environ.get("KERRERA_EXAMPLE_STEP", "0.8"))
        await job.progress(0, "queued work picked up", step="start")
        for done, (step, message) in enumerate(STEPS, start=1):
            await asyncio.sleep(pause)  # stands in for the real signal processing
            await job.progress(round(100 * done / len(STEPS), 1), message, step=step)
        stems = [step for step, _ in STEPS[1:5]]
        return Record({"title": job.args.get("title"), "stems": stems})
