"""Fixtures: a real PostgreSQL (the machine's via KERRERA_TEST_DSN, else an embedded one),
a fresh schema per test, apps that are always stopped, and an `eventually` helper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from acceptance.nodes import Node
from support import scripted

from kerrera import Kerrera

T = TypeVar("T")


@pytest.fixture(scope="session")
def dsn(kerrera_dsn: str) -> str:
    """The test database: KERRERA_TEST_DSN, or an embedded PostgreSQL for this session
    (the fixture of Kerrera's own pytest plugin, which users get too)."""
    return kerrera_dsn


@pytest.fixture
def prefix(kerrera_prefix: str) -> str:
    """A schema of its own for each test, dropped afterwards (isolates commits and
    LISTEN/NOTIFY channels, which are named after the schema): the plugin's fixture."""
    return kerrera_prefix


@pytest.fixture
async def make_app(dsn: str, prefix: str) -> AsyncIterator[Callable[..., Kerrera]]:
    """Build apps on the test schema; every app built is stopped at teardown."""
    apps: list[Kerrera] = []

    def build(**options: Any) -> Kerrera:
        options.setdefault("shutdown_grace_period", 2.0)
        app = Kerrera(dsn, prefix=prefix, **options)
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.stop(grace=0.5)


@pytest.fixture(autouse=True)
def _reset_scripted() -> Iterator[None]:
    scripted.reset()
    yield
    scripted.release_all()


@pytest.fixture
def sql(dsn: str, prefix: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Run a statement against the test schema and return its rows (for assertions)."""

    def run(query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{prefix}", public')
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    return run


async def eventually(
    check: Callable[[], Awaitable[T] | T], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


# -- real node processes (acceptance tests) ---------------------------------------------


@pytest.fixture
def run(dsn: str, prefix: str) -> Iterator[Callable[..., Node]]:
    """Start `kerrera <command> --dsn <test db> --prefix <test schema> ...`; processes
    still alive at teardown are killed."""
    nodes: list[Node] = []

    def start(command: str, *args: str) -> Node:
        node = Node([command, "--dsn", dsn, "--prefix", prefix, *args])
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.kill()


@pytest.fixture
def start_node(run: Callable[..., Node]) -> Callable[..., Node]:
    """Start a worker node on the test schema running acceptance.nodeworkers' workers, and
    wait until it says it runs its queues."""

    def start(*, queues: str = "default:5", grace: float = 1.0, name: str | None = None,
              extra: tuple[str, ...] = ()) -> Node:  # fmt: skip
        args = [
            "--queues",
            queues,
            "--module",
            "acceptance.nodeworkers",
            "--shutdown-grace-period",
            str(grace),
            *extra,
        ]
        if name is not None:
            args += ["--node", name]
        node = run("start", *args)
        node.wait_for("running queues")
        return node

    return start


@pytest.fixture
def client(dsn: str, prefix: str) -> Kerrera:
    """An app with no queues, for inserting and reading jobs (through `.sync`)."""
    return Kerrera(dsn, prefix=prefix)
