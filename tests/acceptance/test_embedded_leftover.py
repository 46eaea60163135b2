"""The embedded PostgreSQL does not outlive the processes that use it.

`kerrera start` with no database configured starts a server in its data folder. Killed
with -9, the node cannot stop it: its watchdog does. When the watchdog is killed too, the
next start takes the server over (and says so), and stops it on its way out. A data
folder deleted under a running node stops the node with one `kerrera: error:` line, and
the next start says that the database it creates is new and empty.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from acceptance.nodes import Node, until

START = 180.0  # seconds an embedded start may take on a loaded machine (initdb included)


def embedded_node(data: Path, nodes: list[Node]) -> Node:
    node = Node(["start", "--data-dir", str(data), "--queues", "default:1"])
    nodes.append(node)  # killed (and its pipes closed) at the end of the test
    node.wait_for("running queues", timeout=START)
    return node


def server_pid(data: Path) -> int:
    return int((data / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])


def running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def watchdogs(data: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        words = process.info["cmdline"] or []
        if any(w.endswith("embedded_watch.py") for w in words) and str(data) in " ".join(words):
            found.append(process)
    return found


def test_a_killed_node_leaves_no_server_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nodes: list[Node] = []
    try:
        node = embedded_node(data, nodes)
        server = server_pid(data)
        assert running(server) and len(watchdogs(data)) == 1
        node.proc.kill()  # kill -9: no exit handler runs
        node.wait(10)
        until(lambda: not running(server), timeout=60)  # the watchdog stopped it
        assert "ended without stopping the server" in (data / "watchdog.log").read_text()

        # The watchdog killed with its node: the server is left to the next start.
        node = embedded_node(data, nodes)
        server = server_pid(data)
        [watchdog] = watchdogs(data)
        watchdog.kill()
        node.proc.kill()
        node.wait(10)
        assert running(server)
        node = embedded_node(data, nodes)
        assert f"(pid {server}) was left running by process(es) " in node.stderr
        assert "reusing it" in node.stderr and server_pid(data) == server
        node.signal(signal.SIGTERM)
        assert node.wait(60) == 0
        until(lambda: not running(server), timeout=60)  # stopped with its new user
    finally:
        for node in nodes:
            node.kill()


def test_a_data_folder_deleted_under_a_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    nodes: list[Node] = []
    try:
        node = embedded_node(data, nodes)
        server = server_pid(data)
        # (the server may write a file while the tree is removed: remove until gone)
        until(lambda: not (shutil.rmtree(data, ignore_errors=True) or data.exists()), timeout=60)
        assert node.wait(60) == 2
        errors = [line for line in node.stderr.splitlines() if line.startswith("kerrera:")]
        assert errors[-1].startswith("kerrera: error: the embedded database's folder ")
        assert "was deleted while this node used it" in errors[-1]
        assert sum(line.startswith("kerrera: error:") for line in errors) == 1
        assert "Traceback" not in node.stderr
        until(lambda: not running(server), timeout=60)

        node = embedded_node(data, nodes)
        # a new process cannot tell a deleted folder from a first run: it says what it
        # did (INFO, shown by `kerrera start`), without a warning on every first run
        [said] = [line for line in node.stderr.splitlines() if "new, empty" in line]
        assert " INFO kerrera.embedded: " in said and "jobs stored before" in said
        node.signal(signal.SIGTERM)
        assert node.wait(60) == 0
    finally:
        for node in nodes:
            node.kill()
