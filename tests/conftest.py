"""Fixtures: a real PostgreSQL (the machine's via KERRERA_TEST_DSN, else an embedded one),
a fresh schema per test, apps that are always stopped, and an `eventually` helper."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from support import scripted

from kerrera import Kerrera

T = TypeVar("T")


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    """The test database: KERRERA_TEST_DSN, or an embedded PostgreSQL for this session."""
    given = os.environ.get("KERRERA_TEST_DSN")
    if given:
        yield given
        return
    from kerrera._embedded import embedded_dsn

    with tempfile.TemporaryDirectory(prefix="kerrera-test-") as tmp:
        yield embedded_dsn(Path(tmp))


@pytest.fixture
def prefix(dsn: str) -> Iterator[str]:
    """A schema of its own for each test, dropped afterwards (isolates commits and
    LISTEN/NOTIFY channels, which are named after the schema)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


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
