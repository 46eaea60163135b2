"""Which `Kerrera` instance is current: the one started in this context (inside a job,
the one running it)."""

from __future__ import annotations

import contextvars
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

CURRENT_APP: contextvars.ContextVar[Kerrera] = contextvars.ContextVar("kerrera_app")
# The instance started most recently in this process, for helpers called from a context
# that did not start it (a test whose fixture started the app in another task).
_LAST: list[weakref.ReferenceType[Kerrera]] = []


def set_last_started(app: Kerrera) -> None:
    """Remember `app` as the instance started most recently."""
    _LAST[:] = [weakref.ref(app)]


def last_started() -> Kerrera | None:
    """The instance started most recently in this process, if it still exists."""
    return _LAST[0]() if _LAST else None


def current_app() -> Kerrera:
    """The `Kerrera` instance started in this context: inside a job, the one running it.

    Example (a pipeline step enqueuing the next):
        @worker(queue="media")
        async def download(job: Job) -> None:
            await current_app().insert(separate.new({"track": job.args["track"]}))
    """
    try:
        return CURRENT_APP.get()
    except LookupError:
        raise RuntimeError("no Kerrera instance was started in this context") from None
