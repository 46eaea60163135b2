"""Cross-site request defences and response headers.

Every action is a POST that must pass two checks: the browser's own word that the request
comes from this site (`Sec-Fetch-Site`, else `Origin` against `Host`), and a token that a
page of this site put in the form (double submit: it must equal the token cookie, which
another site can neither read nor set, the cookie being `SameSite=Strict`). Responses
carry a Content-Security-Policy that allows no inline script, so an injected `<script>`
could not run even if escaping failed.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The cookie holding this browser's token, and the form field / header repeating it.
TOKEN_COOKIE = "kerrera_csrf"
TOKEN_FIELD = "csrf_token"
TOKEN_HEADER = "x-kerrera-csrf"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


def token_of(request: Request) -> str:
    """This browser's token (the cookie's, or a new one the page will set)."""
    token = request.cookies.get(TOKEN_COOKIE, "")
    if len(token) < 32:
        # One new token per request, however often a page asks for it.
        token = getattr(request.state, "new_token", None) or secrets.token_urlsafe(32)
        request.state.new_token = token
    return token


def same_site(request: Request) -> bool:
    """Whether the browser says the request comes from this site."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        # "none": typed in the address bar or a bookmark; never for a cross-site form.
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        # Old browsers send neither header; the token below still has to match.
        return True
    host = request.headers.get("host", "")
    return origin != "null" and urlsplit(origin).netloc == host


async def check_post(request: Request, given: str | None) -> None:
    """403 unless the POST comes from this site and repeats the cookie's token."""
    if not same_site(request):
        raise HTTPException(403, "Cross-site request refused.")
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    given = given or request.headers.get(TOKEN_HEADER, "")
    if len(cookie) < 32 or not hmac.compare_digest(cookie.encode(), given.encode()):
        raise HTTPException(403, "Missing or wrong form token: reload the page and try again.")


class SecurityHeaders:
    """ASGI middleware adding the CSP and related headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                extra = [h for h in HEADERS if h[0] not in names]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, sending)
