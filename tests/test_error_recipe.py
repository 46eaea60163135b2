"""The error reporting recipes of docs/metrics-and-tracing.md, run as written (read from the
doc itself) against real failing jobs, with fake reporters in place of Sentry's SDK."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from support.scripted import Scripted, Slow

from kerrera import telemetry
from kerrera.core.errors import JobTimeoutError

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics-and-tracing.md"
WORKER = Scripted.new({}).worker


def recipe(name: str) -> str:
    """The python block that follows `<!-- recipe: name -->` in the doc."""
    found = re.search(rf"<!-- recipe: {name} -->\n```python\n(.*?)\n```", DOC.read_text(), re.S)
    assert found, f"no recipe {name!r} in {DOC}"
    return found.group(1)


class FakeScope:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.contexts: dict[str, Any] = {}
        self.fingerprint: list[str] | None = None

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value

    def set_context(self, key: str, value: Any) -> None:
        self.contexts[key] = value


class FakeSentry:
    """What the recipe uses of `sentry_sdk`: scopes, capture_exception, capture_message."""

    def __init__(self) -> None:
        self.captured: list[tuple[object, FakeScope]] = []
        self._scopes: list[FakeScope] = []

    @contextmanager
    def new_scope(self) -> Iterator[FakeScope]:
        self._scopes.append(FakeScope())
        try:
            yield self._scopes[-1]
        finally:
            self._scopes.pop()

    def capture_exception(self, error: BaseException) -> None:
        self.captured.append((error, self._scopes[-1]))

    def capture_message(self, message: str, level: str = "info") -> None:
        self.captured.append((message, self._scopes[-1]))


@pytest.fixture
def sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSentry]:
    """The Sentry recipe, attached with a fake SDK; detached at teardown."""
    fake = FakeSentry()
    monkeypatch.setitem(sys.modules, "sentry_sdk", fake)
    exec(recipe("sentry"), {})
    yield fake
    telemetry.detach("sentry")


async def test_the_sentry_recipe_tags_and_groups_each_failed_attempt(
    make_app: Any, sentry: FakeSentry
) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({"do": "error", "message": "boom"}, max_attempts=2))
        await eventually(lambda: len(sentry.captured) == 2, timeout=15)
    (first, scope1), (second, scope2) = sentry.captured
    assert isinstance(first, RuntimeError) and str(first) == "boom"
    assert isinstance(second, RuntimeError)
    assert scope1.tags == {
        "kerrera.worker": WORKER,
        "kerrera.queue": "default",
        "kerrera.attempt": "1",
        "kerrera.kind": "error",
        "kerrera.state": "retryable",
    }
    assert scope2.tags["kerrera.attempt"] == "2"
    assert scope2.tags["kerrera.state"] == "discarded"
    assert scope1.fingerprint == scope2.fingerprint == [WORKER, "RuntimeError"]
    assert scope1.contexts["kerrera job"] == {"id": job.id, "args": job.args}


async def test_the_sentry_recipe_alone_hears_failures(make_app: Any, sentry: FakeSentry) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "error"}, max_attempts=1))
        await eventually(lambda: app.sync.get_job(job.id).state.value == "discarded")
    assert len(sentry.captured) == 1


async def test_the_generic_recipe_hands_any_reporter_tags_and_a_fingerprint(make_app: Any) -> None:
    namespace: dict[str, Any] = {}
    exec(recipe("any"), namespace)
    telemetry.detach("job-errors")  # the doc's logging example: ours goes in its place
    sent: list[tuple[object, dict[str, str], list[str]]] = []
    handler = namespace["job_error_reporter"](lambda *report: sent.append(report))
    telemetry.attach("test.job-errors", ["job.exception"], handler)
    try:
        app = make_app(queues={"default": 2})
        async with app:
            await app.insert(Slow.new({"seconds": 5}, max_attempts=1))
            await eventually(lambda: sent)
    finally:
        telemetry.detach("test.job-errors")
    [(error, tags, fingerprint)] = sent
    assert isinstance(error, JobTimeoutError)
    slow = Slow.new({}).worker
    assert tags == {
        "worker": slow,
        "queue": "default",
        "attempt": "1",
        "kind": "timeout",
        "state": "discarded",
    }
    assert fingerprint == [slow, "JobTimeoutError"]
