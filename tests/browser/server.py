"""Serve an example web app with a real uvicorn process on a free port, against the test
database and schema, for the HTTP and browser tests of the examples."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")


class Server:
    """A uvicorn process whose log is collected by a thread (shown when a test fails)."""

    def __init__(self, app: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "0"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def url(self, timeout: float = 30.0) -> str:
        """The base URL, once uvicorn listens (after the app's lifespan startup)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if found := LISTENING.search(line):
                        return found.group(1)
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    raise AssertionError(f"the example did not start:\n{self.log}")
                self._changed.wait(0.1)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (uvicorn's graceful shutdown, so Kerrera drains), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            self._close()
            raise AssertionError(
                f"the example did not stop within {timeout}s:\n{self.log}"
            ) from None
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def serve_example(dsn: str, prefix: str, *, step: float = 0.3) -> Iterator[Server]:
    """Run examples/fastapi_sse under uvicorn on the test database and schema, with
    pipeline steps of `step` seconds; stop it (checking it exits cleanly) afterwards."""
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(KERRERA_DATABASE_URL=dsn, KERRERA_PREFIX=prefix, KERRERA_EXAMPLE_STEP=str(step))
    server = Server("examples.fastapi_sse.app:app", env)
    try:
        server.url()
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: either exit
    # is clean, as long as the app's shutdown ran.
    assert code in (0, -signal.SIGTERM), f"the example exited with {code}:\n{server.log}"
    assert "Application shutdown complete" in server.log, server.log
