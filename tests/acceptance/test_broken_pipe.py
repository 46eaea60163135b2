"""`kerrera start ... 2>&1 | tee log`, and the reader goes away: the node must still stop
on SIGTERM (its signal handler once printed before setting the stop, and the failing
print left the node running until kill -9)."""

from __future__ import annotations

import signal
import subprocess

from acceptance.nodes import KERRERA, _env


def test_sigterm_stops_a_node_whose_stderr_reader_is_gone(dsn: str, prefix: str) -> None:
    proc = subprocess.Popen(
        [str(KERRERA), "start", "--dsn", dsn, "--prefix", prefix, "--queues", "default:1"],
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # until it runs its queues
            if "running queues" in line:
                break
        proc.stderr.close()  # the pipe's reader is gone: every write now fails
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
