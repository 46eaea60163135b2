"""`kerrera start ... 2>&1 | tee log`, and the reader goes away: the node must still stop
on SIGTERM (its signal handler once printed before setting the stop, and the failing
print left the node running until kill -9)."""

from __future__ import annotations

import signal
import subprocess

from acceptance.nodes import KERRERA, _env, until
from support.scripted import Scripted

from kerrera import Kerrera


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


def test_a_node_whose_log_cannot_be_written_still_runs_jobs(
    dsn: str, prefix: str, client: Kerrera
) -> None:
    """`kerrera start` logs a line per job: once nobody reads them, jobs still run (a
    failed log write is dropped) and the node still stops on SIGTERM."""
    proc = subprocess.Popen(
        [str(KERRERA), "start", "--dsn", dsn, "--prefix", prefix, "--queues", "default:2"],
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "running queues" in line:
                break
        proc.stderr.close()
        jobs = [
            client.sync.insert(Scripted.new({"do": "ok"})),
            client.sync.insert(Scripted.new({"do": "error"}, max_attempts=1)),
        ]
        until(lambda: [client.sync.get_job(j.id).state for j in jobs]  # type: ignore[union-attr]
              == ["completed", "discarded"], timeout=30)  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
