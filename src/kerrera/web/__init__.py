"""Kerrera Web: the operator's dashboard (jobs, search, job detail, queues, errors,
charts, workflows, cron, actions),
server-rendered with Starlette and Jinja2, live through server-sent events.

Run it with `kerrera web` (binds 127.0.0.1:9400), or mount it in your application:

    from fastapi import FastAPI
    from kerrera.contrib.starlette import kerrera_lifespan
    from kerrera.web import User, kerrera_web

    def who(request):  # your own authentication; None forbids
        return User(request.headers["x-user"], "read_only")

    api = FastAPI(lifespan=kerrera_lifespan(app))
    api.mount("/kerrera", kerrera_web(app, resolver=who))

Needs the `web` extra: `pip install 'kerrera[web]'`. docs/web-dashboard.md has more.
"""

from kerrera.web.app import Redactor, Web, kerrera_web
from kerrera.web.auth import ACTIONS, Resolver, User, basic_auth

__all__ = ["ACTIONS", "Redactor", "Resolver", "User", "Web", "basic_auth", "kerrera_web"]
