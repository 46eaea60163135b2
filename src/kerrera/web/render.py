"""Rendering: the Jinja2 environment (escaping everything by default), the context every
page gets, and the small formatters templates use."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from kerrera.web.auth import User
from kerrera.web.security import TOKEN_COOKIE, token_of

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def base_path(request: Request) -> str:
    """Where the dashboard is mounted ('' standalone, '/kerrera' under a mount)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def page(
    request: Request, template: str, user: User | None, code: int = 200, **context: Any
) -> HTMLResponse:
    """Render `template` with what every page needs, and set the form token cookie."""
    base = base_path(request)
    token = token_of(request)
    response = HTMLResponse(render(request, template, user, **context), status_code=code)
    if getattr(request.state, "new_token", None) == token:
        response.set_cookie(
            TOKEN_COOKIE, token, path=base or "/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
    return response


def render(request: Request, template: str, user: User | None, **context: Any) -> str:
    """`template` rendered with what every page needs, as text."""
    return _env.get_template(template).render(
        base=base_path(request), user=user, csrf_token=token_of(request),
        request_path=request.url.path, **context,
    )  # fmt: skip


def error_page(
    request: Request, status: int, message: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A plain page saying what went wrong (never echoing markup: it is escaped)."""
    response = page(request, "error.html", None, status, status=status, message=message)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def pretty(data: Any) -> str:
    """JSON for display, indented (escaped later by the template like everything)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def compact(data: Any) -> str:
    """JSON on one line, for tables."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, default=str, ensure_ascii=False)


def ago(value: Any, now: datetime | None = None) -> str:
    """`3m ago`, `in 12s`: a timestamp (naive UTC, aware, or ISO text) relative to now."""
    at = moment(value)
    if at is None:
        return ""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    seconds = (now - at).total_seconds()
    span = abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if span >= size:
            text = f"{int(span // size)}{unit}"
            break
    else:
        return "now"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def moment(value: Any) -> datetime | None:
    """A timestamp as naive UTC: a datetime, or the ISO text stored in a job's errors."""
    found: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            found = datetime.fromisoformat(value)
        except ValueError:
            return None
    if found is not None and found.tzinfo is not None:
        found = found.astimezone(UTC).replace(tzinfo=None)
    return found


def stamp(value: Any) -> str:
    """A timestamp (datetime or ISO text) as `2026-12-03 14:58:31Z`."""
    found = moment(value)
    return "" if found is None else found.strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Block:
    """Part of a traceback: `ours` blocks are Kerrera's own frames, shown folded."""

    text: str
    ours: bool


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)"')


def fold_traceback(text: str) -> list[Block]:
    """Split a traceback into blocks, Kerrera's own frames (file under a `kerrera`
    package folder) apart from the rest, so the page can fold them away."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        frame = _FRAME.match(lines[i])
        # A frame is its "File ..." line and the indented lines under it.
        end = i + 1
        if frame:
            while (
                end < len(lines) and lines[end].startswith("    ") and not _FRAME.match(lines[end])
            ):
                end += 1
        ours = bool(frame and _is_ours(frame.group("file")))
        chunk = "\n".join(lines[i:end])
        if blocks and blocks[-1].ours == ours:
            blocks[-1] = Block(blocks[-1].text + "\n" + chunk, ours)
        else:
            blocks.append(Block(chunk, ours))
        i = end
    return blocks


def _is_ours(path: str) -> bool:
    parts = re.split(r"[/\\]", path)
    return "kerrera" in parts[:-1] and "tests" not in parts and "examples" not in parts


_env.filters.update(
    pretty=pretty, compact=compact, ago=ago, stamp=stamp, fold_traceback=fold_traceback
)
_env.globals.update(now=lambda: datetime.now(UTC).replace(tzinfo=None))
