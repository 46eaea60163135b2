"""Fast JSON for the hot path: orjson, configured once for psycopg's json/jsonb loaders."""

from __future__ import annotations

from typing import Any

import orjson
from psycopg.types.json import set_json_dumps, set_json_loads

# Refuse what plain JSON cannot carry instead of quietly turning it into a string: a
# datetime in args would come back to the worker as text.
_STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any) -> str:
    """Compact JSON text; raises TypeError for what JSON cannot carry (and non-str keys)."""
    return orjson.dumps(value, option=_STRICT).decode()


def loads(data: str | bytes) -> Any:
    """Parse JSON text."""
    return orjson.loads(data)


def _dumps_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=_STRICT)


def configure(context: Any) -> None:
    """Make psycopg parse and write json/jsonb with orjson on `context` (a connection or
    cursor): decoding `args`/`meta` is a large share of the per-job cost otherwise."""
    set_json_loads(orjson.loads, context)
    set_json_dumps(_dumps_bytes, context)
