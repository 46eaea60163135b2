"""Prometheus metrics: counters and histograms from real job runs, queue gauges read from a
real database and node, the HTTP endpoint, and `kerrera start --metrics-port`."""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from acceptance.nodes import Node, until
from acceptance.nodeworkers import traced
from conftest import eventually
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import scripted
from support.scripted import Scripted

from kerrera import ConfigError, Kerrera, telemetry
from kerrera.telemetry.prometheus import PrometheusMetrics, serve

WORKER = Scripted.new({}).worker


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def attach(registry: CollectorRegistry) -> AsyncIterator[Callable[..., PrometheusMetrics]]:
    """Attach PrometheusMetrics to the test's registry; always detached at teardown."""
    made: list[PrometheusMetrics] = []

    def build(app: Kerrera | None, **options: Any) -> PrometheusMetrics:
        metrics = PrometheusMetrics(app, registry=registry, **options)
        metrics.attach()
        made.append(metrics)
        return metrics

    yield build
    for metrics in made:
        metrics.detach()
    await asyncio.sleep(0)  # let the refresh tasks see their cancellation


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _jobs(registry: CollectorRegistry, state: str) -> float:
    return _value(registry, "kerrera_jobs_total", worker=WORKER, queue="default", state=state)


def _runs(registry: CollectorRegistry) -> float:
    return _value(registry, "kerrera_job_duration_seconds_count", worker=WORKER, queue="default")


async def test_job_outcomes_are_counted(
    make_app: Any, attach: Any, registry: CollectorRegistry
) -> None:
    attach(None)
    app = make_app(queues={"default": 5}, stage_interval=0.1)
    async with app:
        await app.insert_all(
            [
                Scripted.new({"do": "ok"}),
                Scripted.new({"do": "fail_until", "times": 2}),  # retryable, then completed
                Scripted.new({"do": "error"}, max_attempts=1),  # discarded
                Scripted.new({"do": "snooze", "seconds": 0}),  # snoozed, then completed
                Scripted.new({"do": "cancel"}),
            ]
        )
        await eventually(lambda: _runs(registry) == 7 and _jobs(registry, "completed") == 3)
    assert {s: _jobs(registry, s) for s in ("retryable", "discarded", "snoozed", "cancelled")} == {
        "retryable": 1,
        "discarded": 1,
        "snoozed": 1,
        "cancelled": 1,
    }
    assert _value(registry, "kerrera_job_queue_time_seconds_count", queue="default") == 7
    failed = _value(
        registry, "kerrera_job_exceptions_total", worker=WORKER, queue="default", kind="error"
    )
    assert failed == 2
    assert _value(registry, "kerrera_jobs_inserted_total", queue="default") == 5


async def test_inserts_are_counted_by_queue_without_unique_conflicts(
    make_app: Any, attach: Any, registry: CollectorRegistry
) -> None:
    attach(None)
    app = make_app()  # inserts only: nothing runs
    await app.insert_all([Scripted.new({}, queue="a"), Scripted.new({}, queue="b")])
    await app.insert(Scripted.new({"n": 1}, queue="a", unique=3600))
    again = await app.insert(Scripted.new({"n": 1}, queue="a", unique=3600))
    assert again.conflict
    await asyncio.to_thread(app.sync.insert, Scripted.new({}, queue="b"))  # no loop there
    assert _value(registry, "kerrera_jobs_inserted_total", queue="a") == 2
    assert _value(registry, "kerrera_jobs_inserted_total", queue="b") == 2


async def test_queue_gauges_show_waiting_and_running_jobs(
    make_app: Any, attach: Any, registry: CollectorRegistry
) -> None:
    app = make_app(queues={"default": 2, "other": 3})
    async with app:
        await app.pause_queue("other")
        # Attached on the app's loop: its task refreshes depth without being asked.
        attach(app, refresh_interval=0.05)
        await app.insert_all([Scripted.new({"do": "block", "key": "k"}) for _ in range(5)])
        await app.insert(Scripted.new({}, queue="later", schedule_in=3600))
        await app.insert(Scripted.new({}, queue="other"))

        def depth(queue: str, state: str) -> float:
            return _value(registry, "kerrera_queue_depth", queue=queue, state=state)

        await eventually(lambda: _value(registry, "kerrera_queue_running", queue="default") == 2)
        # One refresh that saw every insert (an earlier one may have seen only some).
        await eventually(
            lambda: (
                depth("later", "scheduled") == depth("other", "available") == 1
                and depth("default", "executing") == 2
            )
        )
        assert depth("default", "available") == 3
        assert _value(registry, "kerrera_queue_limit", queue="default") == 2
        assert _value(registry, "kerrera_queue_limit", queue="other") == 3
        assert _value(registry, "kerrera_queue_paused", queue="other") == 1
        assert _value(registry, "kerrera_queue_paused", queue="default") == 0
        assert _value(registry, "kerrera_queue_depth_refreshed_timestamp_seconds") > 0

        scripted.gate("k").set()
        # A queue whose jobs are all done reads 0 rather than vanishing.
        await eventually(
            lambda: depth("default", "executing") == 0 == depth("default", "available")
        )
        for state in ("available", "executing", "scheduled"):
            labels = {"queue": "default", "state": state}
            assert registry.get_sample_value("kerrera_queue_depth", labels) == 0


async def test_a_failed_depth_refresh_is_logged_and_the_scrape_still_works(
    make_app: Any, attach: Any, registry: CollectorRegistry, sql: Any, caplog: Any
) -> None:
    app = make_app()
    await app.insert(Scripted.new({}))  # connects: depth can be read without a start
    metrics = attach(app, refresh_interval=3600)
    assert await metrics.refresh()
    assert _value(registry, "kerrera_queue_depth", queue="default", state="available") == 1
    sql("ALTER TABLE oban_jobs RENAME TO oban_jobs_away")
    try:
        with caplog.at_level(logging.WARNING, logger="kerrera.prometheus"):
            assert not await metrics.refresh()
        assert "could not read queue depth" in caplog.text
        # The last good reading stays; collecting never raises.
        assert _value(registry, "kerrera_queue_depth", queue="default", state="available") == 1
    finally:
        sql("ALTER TABLE oban_jobs_away RENAME TO oban_jobs")
    assert await metrics.refresh()


async def test_detach_unregisters_and_stops_counting(
    make_app: Any, registry: CollectorRegistry
) -> None:
    metrics = PrometheusMetrics(registry=registry)
    metrics.attach()
    try:
        assert metrics.handler_id in telemetry.handlers()
    finally:
        metrics.detach()
    assert metrics.handler_id not in telemetry.handlers()
    assert not [m.name for m in registry.collect()]
    app = make_app()
    await app.insert(Scripted.new({}))
    assert metrics.inserted.collect()[0].samples == []  # detached: nothing counted
    again = PrometheusMetrics(registry=registry)  # the names are free again
    again.attach()
    again.detach()


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_serve_answers_scrapes_over_http_and_close_stops_it(
    make_app: Any, registry: CollectorRegistry
) -> None:
    app = make_app(queues={"default": 2})
    server = serve(app, 0, addr="127.0.0.1", registry=registry, refresh_interval=0.05)
    try:
        assert server.port > 0
        async with app:
            await app.insert(Scripted.new({}))
            key = f"kerrera_jobs_total{{queue=default,state=completed,worker={WORKER}}}"

            async def scraped() -> bool:
                return (await asyncio.to_thread(_scrape, server.port)).get(key) == 1

            await eventually(scraped)
            samples = await asyncio.to_thread(_scrape, server.port)
            assert samples["kerrera_queue_limit{queue=default}"] == 2
            assert "kerrera_queue_running{queue=default}" in samples
    finally:
        server.close()
    assert server.metrics.handler_id not in telemetry.handlers()
    with pytest.raises(OSError):
        await asyncio.to_thread(_scrape, server.port)


async def test_a_taken_port_or_registry_leaves_nothing_attached(
    registry: CollectorRegistry,
) -> None:
    before = telemetry.handlers()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve(None, port, addr="127.0.0.1", registry=registry)
    assert telemetry.handlers() == before
    assert not list(registry.collect())
    first = PrometheusMetrics(registry=registry)
    first.attach()
    try:
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            PrometheusMetrics(registry=registry).attach()
        assert telemetry.handlers() == sorted([*before, first.handler_id])
    finally:
        first.detach()


def test_importing_without_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # None: "not installed"
    monkeypatch.delitem(sys.modules, "kerrera.telemetry.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'kerrera\[prometheus\]'"):
        importlib.import_module("kerrera.telemetry.prometheus")


# -- the CLI --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_kerrera_start_serves_metrics(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    port = _free_port()
    start_node(extra=("--metrics-port", str(port), "--metrics-addr", "127.0.0.1"))
    path = tmp_path / "events"
    client.sync.insert_all([traced.new({"path": str(path), "tag": f"t{i}"}) for i in range(3)])
    worker = traced.new({}).worker
    key = f"kerrera_jobs_total{{queue=default,state=completed,worker={worker}}}"
    until(lambda: _scrape(port).get(key) == 3, timeout=15)
    samples = _scrape(port)
    assert samples["kerrera_queue_limit{queue=default}"] == 5
    assert "process_cpu_seconds_total{}" in samples  # the default registry's own metrics
