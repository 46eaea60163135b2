"""Notification payloads in the forms Elixir Oban sends and accepts."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

#: PostgreSQL caps a NOTIFY payload at 8000 bytes; Oban compresses above 512.
_COMPRESS_ABOVE = 512


def encode(message: dict[str, Any]) -> str:
    """JSON with sorted keys; compressed as `Z:` + base64(gzip) when large."""
    text = json.dumps(message, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) <= _COMPRESS_ABOVE:
        return text
    return "Z:" + base64.b64encode(gzip.compress(text.encode())).decode()


def decode(payload: str) -> dict[str, Any]:
    """Decode plain JSON, `Z:`-prefixed gzip, or the legacy bare base64 gzip form.

    Raises `ValueError` for anything else (the caller logs and drops it).
    """
    if payload.startswith("Z:"):
        payload = gzip.decompress(base64.b64decode(payload[2:])).decode()
    elif payload.startswith("H4sI"):
        payload = gzip.decompress(base64.b64decode(payload)).decode()
    message = json.loads(payload)
    if not isinstance(message, dict):
        raise ValueError(f"notification payload is not an object: {payload[:80]!r}")
    return message
