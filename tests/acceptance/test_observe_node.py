"""A real `kerrera start --log-events` node writes one JSON object per line for each job
outcome, and a subscriber process hears the node's job events."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acceptance.nodes import Node, until

from kerrera import Kerrera


def test_log_events_writes_json_lines(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    node = start_node(extra=("--log-events",))
    evidence = tmp_path / "runs.txt"
    job = client.sync.insert(_traced({"path": str(evidence), "tag": "a", "seconds": 0.01}))

    def stop_line() -> dict[str, Any] | None:
        for line in node.stderr.splitlines():
            if line.startswith("{") and '"job.stop"' in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    line = until(stop_line, timeout=15)
    assert line["id"] == job.id and line["state"] == "completed"
    assert line["worker"] == "acceptance.nodeworkers.traced" and line["queue"] == "default"
    assert line["attempt"] == 1 and line["duration"] >= 0 and line["queue_time"] >= 0
    assert "at" in line and line["event"] == "job.stop"


def _traced(args: dict[str, Any]) -> Any:
    from acceptance.nodeworkers import traced

    return traced.new(args)


def test_a_subscriber_process_hears_a_node_process(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path, dsn: str, prefix: str
) -> None:
    start_node()
    watcher = _subscriber(dsn, prefix, "default", "--count", "2")
    try:
        until(lambda: '"ready"' in watcher.stdout, timeout=15)
        job = client.sync.insert(
            _traced({"path": str(tmp_path / "runs.txt"), "tag": "b", "seconds": 0.01})
        )
        watcher.wait(timeout=20)
    finally:
        watcher.kill()
    events = [json.loads(line) for line in watcher.stdout.splitlines()][1:]
    assert [(e["kind"], e["job_id"]) for e in events] == [
        ("started", job.id),
        ("completed", job.id),
    ]
    assert events[0]["node"] == events[1]["node"] != ""


def _subscriber(dsn: str, prefix: str, *targets: str) -> Node:
    """The subscriber of tests/support as a process, its output captured like a node's."""
    return Node([dsn, prefix, *targets], program=[sys.executable, "-m", "support.subscriber"])
