"""Which `Kerrera` instance is current: the one started in this context (inside a job,
the one running it)."""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kerrera._app import Kerrera

_CURRENT: contextvars.ContextVar[Kerrera] = contextvars.ContextVar("kerrera_app")


def current_app() -> Kerrera:
    """The `Kerrera` instance started in this context: inside a job, the one running it.

    Example (a pipeline step enqueuing the next):
        @worker(queue="media")
        async def download(job: Job) -> None:
            await current_app().insert(separate.new({"track": job.args["track"]}))
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("no Kerrera instance was started in this context") from None
