"""Real `kerrera` node processes for the acceptance tests, and a polling helper."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent.parent
KERRERA = Path(sys.executable).parent / "kerrera"


def until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        time.sleep(interval)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(TESTS_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("KERRERA_DATABASE_URL", None)
    env.pop("DATABASE_URL", None)
    return env


class Node:
    """One `kerrera` process; its stderr is collected line by line by a thread."""

    def __init__(self, args: list[str], *, program: list[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*(program or [str(KERRERA)]), *args], env=_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._lines: list[str] = []
        self._out: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    @property
    def stdout(self) -> str:
        with self._changed:
            return "\n".join(self._out)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        """Wait until a stderr line contains `text`; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self._lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {text!r} on stderr within {timeout}s:\n" + "\n".join(self._lines)
                    )
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"node exited ({self.proc.returncode}) before "
                        f"printing {text!r}:\n" + "\n".join(self._lines)
                    )
                self._changed.wait(min(left, 0.1))

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code, within `timeout` seconds (fails otherwise); output fully read."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node still running after {timeout}s:\n{self.stderr}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def kill_node_connections(dsn: str, app_name: str) -> list[int]:
    """Terminate every backend of the node under test; return their pids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # In the select list (not the WHERE clause, whose terms the planner may reorder)
        # so that only the rows that passed the filter are terminated.
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app_name,),
        ).fetchall()
    return [pid for pid, terminated in rows if terminated]
