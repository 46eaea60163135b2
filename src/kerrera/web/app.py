"""`kerrera_web(...)`: the dashboard as a Starlette application, standalone or mounted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.engine.dashboard import Dashboard
from kerrera.web import actions, batches, operations, pages, views
from kerrera.web.auth import Resolver
from kerrera.web.live import LiveFeed
from kerrera.web.render import error_page
from kerrera.web.security import SecurityHeaders

HERE = Path(__file__).parent
#: Refresh intervals a page offers, in seconds (0: off).
REFRESH_CHOICES = (1, 2, 5, 15, 60, 0)

#: `redact(job, data) -> data`: what of a job's args or meta may be shown.
Redactor = Callable[[Job, dict[str, Any]], dict[str, Any]]


@dataclass
class Web:
    """What every request handler shares: options, and the connections opened on first
    use (a mounted application's lifespan never runs, so nothing may depend on it)."""

    kerrera: Kerrera
    own: bool
    resolver: Resolver | None
    redact_args: Redactor | None
    redact_meta: Redactor | None
    bulk_action_limit: int
    page_size: int
    dashboard: Dashboard | None = None
    live: LiveFeed | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ready(self) -> tuple[Dashboard, LiveFeed]:
        """The dashboard queries and the live feed, opened once."""
        if self.dashboard is None or self.live is None:
            async with self._lock:
                if self.dashboard is None or self.live is None:
                    if self.own:
                        await self.kerrera.start()  # no queues: connects, runs nothing
                    try:
                        engine = self.kerrera.engine
                    except RuntimeError:
                        raise ConfigError(
                            "kerrera_web: start the Kerrera instance you passed (for example "
                            "with kerrera.contrib.starlette.kerrera_lifespan) before serving"
                        ) from None
                    live = LiveFeed(engine)
                    await live.start()
                    self.dashboard = Dashboard(engine.pool, self.kerrera.config.prefix)
                    self.live = live
        return self.dashboard, self.live

    async def close(self) -> None:
        """Stop the live feed and, for an instance made here, close its connections."""
        if self.live is not None:
            await self.live.stop()
            self.live = None
        self.dashboard = None
        if self.own:
            await self.kerrera.stop()


def kerrera_web(
    kerrera: Kerrera | None = None,
    *,
    dsn: str | None = None,
    prefix: str = "public",
    resolver: Resolver | None = None,
    redact_args: Redactor | None = None,
    redact_meta: Redactor | None = None,
    bulk_action_limit: int = 10_000,
    page_size: int = 20,
) -> Starlette:
    """The Kerrera dashboard as an ASGI application.

    Pass your running `kerrera` instance, or a `dsn` (and `prefix`) for the dashboard to
    connect with its own (no queues: it runs no jobs). `resolver(request)` returns the
    `User` of each request (plain or async; None forbids); without one every visitor
    has full access, which suits only a loopback bind or an application that guards
    the mount itself. `redact_args(job, args)` / `redact_meta(job, meta)` return what
    may be shown. `bulk_action_limit` (10,000) caps the jobs one action may touch;
    `page_size` (20) is the jobs per page.

    Example (FastAPI; the same with Starlette's `Mount`):
        api = FastAPI(lifespan=kerrera_lifespan(app))
        api.mount("/kerrera", kerrera_web(app, resolver=my_resolver))
    """
    if kerrera is not None and dsn is not None:
        raise ConfigError("kerrera_web: pass either a Kerrera instance or 'dsn', not both")
    if type(bulk_action_limit) is not int or bulk_action_limit < 1:
        raise ConfigError(
            f"option 'bulk_action_limit' must be a positive integer, got {bulk_action_limit!r}"
        )
    if type(page_size) is not int or not 1 <= page_size <= 200:
        raise ConfigError(f"option 'page_size' must be an integer from 1 to 200, got {page_size!r}")
    for name, hook in (("resolver", resolver), ("redact_args", redact_args),
                       ("redact_meta", redact_meta)):  # fmt: skip
        if hook is not None and not callable(hook):
            raise ConfigError(f"option '{name}' must be callable, got {hook!r}")
    own = kerrera is None
    instance = Kerrera(dsn, prefix=prefix, leader=False) if kerrera is None else kerrera
    web = Web(
        instance, own, resolver, redact_args, redact_meta, bulk_action_limit, page_size
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Runs only when the dashboard is the top application (standalone).
        yield
        await web.close()

    routes = [
        Route("/", views.home, name="home"),
        Route("/jobs", views.jobs_page, name="jobs"),
        Route("/jobs/actions", actions.bulk_action, methods=["POST"], name="bulk_action"),
        Route("/jobs/new", actions.new_job_form, name="new_job"),
        Route("/jobs/new", actions.insert_job, methods=["POST"]),
        Route("/jobs/{job_id:int}", views.job_page, name="job"),
        Route("/jobs/{job_id:int}/actions", actions.job_action, methods=["POST"]),
        Route("/jobs/{job_id:int}/edit", operations.edit_job_form, name="edit_job"),
        Route("/jobs/{job_id:int}/edit", operations.edit_job, methods=["POST"]),
        Route("/queues", views.queues_page, name="queues"),
        Route("/queues/actions", actions.queue_action, methods=["POST"], name="queue_action"),
        Route("/errors", views.errors_page, name="errors"),
        Route("/errors/actions", operations.error_action, methods=["POST"], name="error_action"),
        Route("/charts", pages.charts_page, name="charts"),
        Route("/workflows", pages.workflows_page, name="workflows"),
        Route("/workflows/{workflow_id}", pages.workflow_page, name="workflow"),
        Route("/workflows/{workflow_id}/actions", operations.workflow_action, methods=["POST"]),
        Route("/batches", batches.batches_page, name="batches"),
        Route("/batches/{batch_id:path}", batches.batch_page, name="batch"),
        Route("/cron", pages.cron_page, name="cron"),
        Route("/events", views.events, name="events"),
        Route("/suggest", views.suggest, name="suggest"),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.web = web
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_page(request, exc.status_code, exc.detail, exc.headers)
