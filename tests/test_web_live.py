"""The dashboard's live feed (one LISTEN per process, fanned out as server-sent events)
and the `kerrera web` command's bind and auth checks."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("jinja2")

from acceptance.nodes import KERRERA

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.web.live import LiveFeed
from kerrera.web.serve import check_bind, is_loopback


async def next_event(stream: AsyncIterator[str], name: str, timeout: float = 10.0) -> str:
    """The next server-sent event called `name` (skipping keep-alives and others)."""

    async def find() -> str:
        async for chunk in stream:
            if chunk.startswith(f"event: {name}\n"):
                return chunk
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(find(), timeout)


@pytest.fixture
async def feed(make_app: Callable[..., Kerrera]) -> AsyncIterator[LiveFeed]:
    app = make_app()
    await app.start()  # no queues: only connects
    live = LiveFeed(app.engine, debounce=0.05)
    await live.start()
    yield live
    await live.stop()


async def test_an_insert_elsewhere_reaches_every_open_stream(
    feed: LiveFeed, make_app: Callable[..., Kerrera]
) -> None:
    tabs = [feed.stream(), feed.stream()]
    for tab in tabs:
        assert await anext(tab) == "retry: 3000\n\n"
        assert await next_event(tab, "status") == 'event: status\ndata: {"live": true}\n\n'
    assert feed.clients == 2
    other = make_app()  # another process's app, as far as the feed can tell
    await other.insert(Job(queue="mail", worker="app.Mailer", args={}))
    for tab in tabs:
        assert "event: changed" in await next_event(tab, "changed")
    for tab in tabs:
        await tab.aclose()  # type: ignore[attr-defined]
    assert feed.clients == 0


async def test_a_burst_of_inserts_is_one_refresh(
    feed: LiveFeed, make_app: Callable[..., Kerrera]
) -> None:
    feed.debounce = 1.0  # long enough that the whole burst falls in one window
    tab = feed.stream()
    await next_event(tab, "status")
    version = feed.version
    other = make_app()
    for n in range(20):
        await other.insert(Job(queue="mail", worker="app.Mailer", args={"n": n}))
    await next_event(tab, "changed")
    # Twenty notifications, one or two refreshes (the window may have opened just before
    # the burst began), never one per insert.
    assert feed.version - version <= 2
    await tab.aclose()  # type: ignore[attr-defined]


def test_only_a_loopback_bind_goes_without_auth() -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host), host
        check_bind(host, has_auth=False, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.5", "dashboard.example.com"):
        assert not is_loopback(host), host
        with pytest.raises(ConfigError, match=f"--host {host}"):
            check_bind(host, has_auth=False, insecure=False)
        check_bind(host, has_auth=True, insecure=False)
        check_bind(host, has_auth=False, insecure=True)


def test_the_command_refuses_an_open_bind_and_a_missing_password(dsn: str, prefix: str) -> None:
    def web(*args: str, env: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KERRERA), "web", "--dsn", dsn, "--prefix", prefix, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    refused = web("--host", "0.0.0.0")
    assert refused.returncode == 2
    assert "--host 0.0.0.0" in refused.stderr and "--basic-auth" in refused.stderr
    import os

    env = {k: v for k, v in os.environ.items() if k != "KERRERA_WEB_PASSWORD"}
    missing = web("--host", "0.0.0.0", "--basic-auth", env=env)
    assert missing.returncode == 2 and "KERRERA_WEB_PASSWORD" in missing.stderr
    bad = web("--resolver", "nowhere")
    assert bad.returncode == 2 and "module:function" in bad.stderr
