"""The dashboard's live feed falls back to polling while notifications are down: its
LISTEN connection is killed in the database (pg_terminate_backend) and reconnecting is
refused, yet a job inserted afterwards (without any notification) still reaches an open
stream as a `changed` event; when the listener is back, the stream says so. A control
shows that without the polling fallback nothing would arrive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

pytest.importorskip("jinja2")

from test_web_live import next_event

from kerrera import Kerrera
from kerrera.web.live import LiveFeed

#: The feed's polling interval in these tests (the dashboard's default is 2 s).
POLL = 0.3
LIVE = 'event: status\ndata: {"live": true}\n\n'
DOWN = 'event: status\ndata: {"live": false}\n\n'
INSERT = (
    "INSERT INTO oban_jobs (queue, worker, args, state) "
    "VALUES ('mail', 'app.Mailer', '{}', 'available')"
)


async def settled(feed: LiveFeed) -> int:
    """Wait until the feed has sent the refresh already due (the new tab's, the status
    change's), and return its version: a later one is due to something after this."""

    async def wait() -> None:
        while feed._dirty.is_set():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), 10)
    return feed.version


async def changed_after(tab: AsyncIterator[str], version: int, timeout: float) -> int:
    """The version of the first `changed` event newer than `version`."""

    async def find() -> int:
        while True:
            event = await next_event(tab, "changed", timeout)
            seen = int(json.loads(event.split("data: ", 1)[1])["version"])
            if seen > version:
                return seen

    return await asyncio.wait_for(find(), timeout)


async def go_down(
    app: Kerrera, sql: Callable[..., list[tuple[Any, ...]]], prefix: str, mp: pytest.MonkeyPatch
) -> None:
    """Kill every listener of this test's schema in the database, and refuse the
    notifier's reconnects until `mp.undo()`."""

    async def refuse() -> psycopg.AsyncConnection[Any]:
        raise psycopg.OperationalError("connection refused (the database is away)")

    mp.setattr(app.engine, "listen_connection", refuse)
    killed = sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND query LIKE %s",
        (f'LISTEN "{prefix}.%',),
    )
    assert killed and all(ok for (ok,) in killed)


@pytest.fixture
async def started(make_app: Callable[..., Kerrera]) -> Kerrera:
    app = make_app()
    await app.start()  # no queues: only connects
    return app


async def test_a_stream_is_refreshed_by_polling_while_notifications_are_down(
    started: Kerrera,
    sql: Callable[..., list[tuple[Any, ...]]],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed = LiveFeed(started.engine, debounce=0.05, poll=POLL)
    await feed.start()
    tab = feed.stream()
    try:
        assert await next_event(tab, "status") == LIVE and feed.connected
        await go_down(started, sql, prefix, monkeypatch)
        assert await next_event(tab, "status") == DOWN and not feed.connected
        before = await settled(feed)
        sql(INSERT)  # no pg_notify reaches the feed: only polling can announce it
        await changed_after(tab, before, timeout=POLL * 10 + 5)
        assert not feed.connected  # still down: the refresh came from polling
        monkeypatch.undo()  # the database takes connections again
        assert await next_event(tab, "status", timeout=30) == LIVE and feed.connected
    finally:
        await tab.aclose()  # type: ignore[attr-defined]
        await feed.stop()


async def test_without_polling_nothing_would_arrive(
    started: Kerrera,
    sql: Callable[..., list[tuple[Any, ...]]],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control: the same outage with polling pushed out of reach (an hour) sends no
    `changed` event for the insert, so the one above comes from the fallback."""
    feed = LiveFeed(started.engine, debounce=0.05, poll=3600.0)
    await feed.start()
    tab = feed.stream()
    try:
        assert await next_event(tab, "status") == LIVE
        await go_down(started, sql, prefix, monkeypatch)
        assert await next_event(tab, "status") == DOWN
        before = await settled(feed)
        sql(INSERT)
        with pytest.raises(TimeoutError):
            await changed_after(tab, before, timeout=2.0)
    finally:
        await tab.aclose()  # type: ignore[attr-defined]
        await feed.stop()
