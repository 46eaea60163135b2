"""Who is asking, and what they may do: the resolver hook, its `User`, HTTP Basic from
environment variables, and the permission check every action runs on the server."""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from kerrera.core.errors import ConfigError

#: Every named action a user may be granted, in the order the docs list them.
ACTIONS = (
    "retry_jobs",
    "cancel_jobs",
    "delete_jobs",
    "insert_jobs",
    "update_jobs",
    "pause_queues",
    "scale_queues",
    "stop_queues",
)


@dataclass(frozen=True, slots=True)
class User:
    """The person behind a request, as a resolver returns them.

    `access` is `"all"`, `"read_only"`, or a set of action names from `ACTIONS` (what
    they may do besides reading). A resolver returns None to forbid the dashboard.

    Example:
        User("ada", "read_only");  User("ops", {"retry_jobs", "pause_queues"})
    """

    name: str
    access: str | frozenset[str] = "all"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"User 'name' must be a non-empty string, got {self.name!r}")
        access = self.access
        if isinstance(access, str):
            if access not in ("all", "read_only"):
                raise ConfigError(
                    f"User 'access' must be 'all', 'read_only' or a set of actions, got {access!r}"
                )
            return
        names = frozenset(access)
        unknown = sorted(names - set(ACTIONS))
        if unknown:
            raise ConfigError(
                f"User 'access': unknown action(s) {', '.join(unknown)}; "
                f"known: {', '.join(ACTIONS)}"
            )
        object.__setattr__(self, "access", names)

    def may(self, action: str) -> bool:
        """Whether this user may carry out `action` (one of `ACTIONS`)."""
        if self.access == "all":
            return True
        return not isinstance(self.access, str) and action in self.access

    @property
    def acts(self) -> bool:
        """Whether the user may do anything at all besides reading."""
        return any(self.may(action) for action in ACTIONS)


#: `resolver(request) -> User | None`, plain or async, called for every request.
Resolver = Callable[[Request], "User | Awaitable[User | None] | None"]

#: Who uses a dashboard started without a resolver: only allowed on a loopback bind
#: (the `kerrera web` command refuses anything else without `--insecure`).
LOCAL_USER = User("local", "all")


async def resolve(resolver: Resolver | None, request: Request) -> User:
    """The user of `request`; 403 when the resolver returns None (forbidden)."""
    if resolver is None:
        return LOCAL_USER
    found: Any = resolver(request)
    if inspect.isawaitable(found):
        found = await found
    if found is None:
        raise HTTPException(403, "You may not use this dashboard.")
    if not isinstance(found, User):
        raise TypeError(f"the web resolver must return a kerrera.web.User or None, got {found!r}")
    return found


def require(user: User, action: str) -> None:
    """Raise 403 unless `user` may do `action`: the check every POST runs."""
    if not user.may(action):
        raise HTTPException(403, f"{user.name} may not {action.replace('_', ' ')}.")


def basic_auth(
    *,
    user_env: str = "KERRERA_WEB_USER",
    password_env: str = "KERRERA_WEB_PASSWORD",
    access: str | Iterable[str] = "all",
    environ: dict[str, str] | None = None,
) -> Resolver:
    """A resolver for HTTP Basic authentication against one user name and password read
    from environment variables (never from the command line, where `ps` shows them).

    The user name defaults to `admin` when `user_env` is unset; the password variable
    must be set and non-empty. A request without the right credentials gets 401 with a
    `WWW-Authenticate` challenge. `access` is what the user may do (see `User`).

    Example:
        web = kerrera_web(dsn=url, resolver=basic_auth(access="read_only"))
    """
    env = os.environ if environ is None else environ
    password = env.get(password_env, "")
    if not password:
        raise ConfigError(
            f"basic_auth: set the password in the environment variable {password_env}"
        )
    name = env.get(user_env) or "admin"
    user = User(name, access if isinstance(access, str) else frozenset(access))
    expected = f"{name}:{password}".encode()

    def check(request: Request) -> User:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        # Compared in constant time, so the timing tells nothing of the password.
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            raise HTTPException(
                401, "Sign in to use this dashboard.",
                headers={"WWW-Authenticate": 'Basic realm="Kerrera", charset="UTF-8"'},
            )  # fmt: skip
        return user

    return check
