"""Kerrera's pytest plugin (loaded automatically once Kerrera is installed).

Fixtures:
  kerrera_dsn (session): the test database: `--kerrera-dsn`, else `KERRERA_TEST_DSN`,
    else an embedded PostgreSQL started for the session.
  kerrera_prefix: a fresh schema for this test, dropped afterwards, so tests never see
    each other's jobs (and can run in any order).
  kerrera_app: a started `Kerrera` on that schema in `manual` testing mode (jobs are
    inserted, not run), and the app the testing helpers use by default. It is an
    async fixture: it needs pytest-asyncio.

Example (tests/test_signup.py):
    from kerrera import testing

    async def test_welcome_mail(kerrera_app):
        await kerrera_app.insert(SendWelcome.new({"to": "a@b.c"}))
        await testing.assert_enqueued(worker=SendWelcome, args={"to": "a@b.c"})
        assert (await kerrera_app.drain_queue("mail"))["completed"] == 1
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kerrera.app.facade import Kerrera


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--kerrera-dsn URL`: the PostgreSQL the Kerrera fixtures use."""
    group = parser.getgroup("kerrera")
    group.addoption(
        "--kerrera-dsn",
        default=None,
        help="PostgreSQL URL for Kerrera's fixtures (default: $KERRERA_TEST_DSN, else an "
        "embedded PostgreSQL)",
    )


@pytest.fixture(scope="session")
def kerrera_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test database's URL (see the module's docstring)."""
    given = request.config.getoption("--kerrera-dsn") or os.environ.get("KERRERA_TEST_DSN")
    if given:
        yield given
        return
    from kerrera.engine.embedded import embedded_dsn

    with tempfile.TemporaryDirectory(prefix="kerrera-pytest-") as tmp:
        yield embedded_dsn(Path(tmp))


@pytest.fixture
def kerrera_prefix(kerrera_dsn: str) -> Iterator[str]:
    """A schema of this test's own, dropped afterwards."""
    import psycopg

    name = f"kerrera_t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(kerrera_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _async_fixture(func: Any) -> Any:
    try:
        import pytest_asyncio
    except ImportError:  # the other fixtures still work; this one says what it needs

        @pytest.fixture(name=func.__name__)
        def needs_pytest_asyncio() -> None:
            pytest.fail("the kerrera_app fixture needs pytest-asyncio: pip install pytest-asyncio")

        return needs_pytest_asyncio
    return pytest_asyncio.fixture(func)


@_async_fixture
async def kerrera_app(kerrera_dsn: str, kerrera_prefix: str) -> AsyncIterator[Kerrera]:
    """A started app in manual mode on this test's schema, stopped afterwards."""
    app = Kerrera(kerrera_dsn, prefix=kerrera_prefix, testing="manual")
    async with app:
        yield app
