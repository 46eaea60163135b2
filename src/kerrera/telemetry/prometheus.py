"""Prometheus metrics: job counters and histograms fed by telemetry events, and queue
gauges (depth, running, limit) that are fresh on every scrape.

Needs `prometheus_client`: `pip install 'kerrera[prometheus]'`. `kerrera start
--metrics-port 9464` serves them; docs/metrics-and-tracing.md lists every metric.

Example:
    from kerrera.telemetry.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics(app)  # the default prometheus_client registry
    metrics.attach()  # on the app's loop, so queue depth is refreshed there
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # an optional extra: say how to get it
    raise ImportError(
        "kerrera.telemetry.prometheus needs prometheus_client: pip install 'kerrera[prometheus]'"
    ) from exc

from kerrera import telemetry
from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from kerrera.app.facade import Kerrera

log = logging.getLogger("kerrera.prometheus")

#: Seconds, for run and wait times: jobs last from milliseconds to many minutes.
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
               120.0, 300.0, 600.0, 1800.0, 3600.0)  # fmt: skip
#: The states `queue_depth` reports (the unfinished ones); a queue seen once keeps
#: reporting 0 for each, so a drained queue reads 0 rather than vanishing.
DEPTH_STATES = UNFINISHED  # the states `count_jobs` counts
_EVENTS = ("job.start", "job.stop", "job.exception", "insert")
_WQ, _WQS, _WQK = ["worker", "queue"], ["worker", "queue", "state"], ["worker", "queue", "kind"]


class PrometheusMetrics:
    """Kerrera's metrics in a prometheus_client registry, fed by telemetry handlers.

    Options:
      app (None): the `Kerrera` whose queues the gauges describe; without it only the
        event metrics (counters, histograms) exist.
      registry (prometheus_client.REGISTRY): where the metrics are registered.
      namespace ("kerrera"): the metric name prefix.
      refresh_interval (5 s): how often a task on the app's loop reads queue depth (call
        `attach()` on that loop, or once `app.loop` is set): scrapes never query.

    Example:
        registry = prometheus_client.CollectorRegistry()
        metrics = PrometheusMetrics(app, registry=registry)
        metrics.attach()
        print(prometheus_client.generate_latest(registry).decode())
    """

    def __init__(
        self,
        app: Kerrera | None = None,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "kerrera",
        refresh_interval: float = 5.0,
    ) -> None:
        self.app = app
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self.refresh_interval = refresh_interval
        self.handler_id = f"kerrera.prometheus.{id(self):x}"
        # Built unregistered: attach() registers them, detach() lets them go.
        counter, histogram = prometheus_client.Counter, prometheus_client.Histogram
        opts: dict[str, Any] = {"namespace": namespace, "registry": None}
        timed: dict[str, Any] = {**opts, "buckets": JOB_BUCKETS}
        self.jobs = counter("jobs", "Jobs finished, by outcome", _WQS, **opts)
        self.duration = histogram("job_duration_seconds", "Time jobs ran", _WQ, **timed)
        self.queue_time = histogram(
            "job_queue_time_seconds", "Time jobs waited to start once due", ["queue"], **timed
        )
        self.exceptions = counter("job_exceptions", "Failed job attempts", _WQK, **opts)
        self.inserted = counter(
            "jobs_inserted", "Jobs inserted (unique conflicts excluded)", ["queue"], **opts
        )
        self.gauges = QueueGauges(app, namespace) if app is not None else None
        self._collectors: list[Collector] = [
            self.jobs, self.duration, self.queue_time, self.exceptions, self.inserted,
        ]  # fmt: skip
        if self.gauges is not None:
            self._collectors.append(self.gauges)
        self._stop_refresh: Callable[[], None] | None = None

    def attach(self) -> None:
        """Register the metrics and start counting; start refreshing queue depth."""
        done: list[Collector] = []
        try:
            for collector in self._collectors:
                self.registry.register(collector)
                done.append(collector)
        except ValueError:  # a name taken in this registry: leave it as it was
            for collector in done:
                self.registry.unregister(collector)
            raise
        telemetry.attach(self.handler_id, _EVENTS, self._handle)
        if self.gauges is not None:
            self._stop_refresh = self.gauges.start_refreshing(self.refresh_interval)

    def detach(self) -> None:
        """Stop counting, stop the refresh task and unregister the metrics."""
        telemetry.detach(self.handler_id)
        if self._stop_refresh is not None:
            self._stop_refresh()
            self._stop_refresh = None
        for collector in self._collectors:
            with contextlib.suppress(KeyError):  # never attached, or already detached
                self.registry.unregister(collector)

    async def refresh(self) -> bool:
        """Read queue depth now (the refresh task does this every `refresh_interval`);
        False when it could not (no app, not started, a database error, logged)."""
        return await self.gauges.refresh() if self.gauges is not None else False

    def _handle(self, event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        if event == "job.stop":
            worker, queue = metadata["worker"], metadata["queue"]
            self.jobs.labels(worker, queue, metadata["state"]).inc()
            self.duration.labels(worker, queue).observe(measurements["duration"])
        elif event == "job.start":
            self.queue_time.labels(metadata["queue"]).observe(measurements["queue_time"])
        elif event == "job.exception":
            self.exceptions.labels(metadata["worker"], metadata["queue"], metadata["kind"]).inc()
        elif event == "insert" and metadata.get("error") is None:
            for job in metadata["jobs"]:
                if not job.conflict:
                    self.inserted.labels(job.queue).inc()


class QueueGauges:
    """The gauges of one app's queues, as a custom collector: running, limit and paused
    are read from `app.producers` at scrape time; depth comes from a snapshot that
    `refresh()` replaces (never mutates), so a scrape thread reads it without locks.
    """

    def __init__(self, app: Kerrera, namespace: str = "kerrera") -> None:
        self.app = app
        self.namespace = namespace
        self._depths: dict[str, dict[str, int]] = {}
        self._refreshed: float | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """Replace the depth snapshot with `app.count_jobs()`; False if it failed."""
        if not self._connected():
            return False  # reading now would open (and leak) connections for a stopped app
        try:
            depths = await asyncio.wait_for(self.app.count_jobs(), 30.0)
        except Exception as exc:
            if not self._connected():
                return False  # the app stopped meanwhile: nothing is wrong
            if not self._failing:  # once per outage, not every few seconds
                log.warning("could not read queue depth for metrics (%s); retrying", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("reading queue depth for metrics again")
        self._failing = False
        # Queues seen before keep reporting (as zeros) once their jobs are all done.
        self._depths = {**{queue: {} for queue in self._depths}, **depths}
        self._refreshed = time.time()
        return True

    def _connected(self) -> bool:
        try:
            self.app.engine  # noqa: B018 - only a started (or used) app has connections
        except RuntimeError:
            return False
        return True

    def start_refreshing(self, interval: float) -> Callable[[], None] | None:
        """Refresh every `interval` seconds on the running loop, else on `app.loop` (when
        attached from another thread); returns what stops it, None with no loop yet."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = self.app.loop
        if loop is None or loop.is_closed():
            log.info("no event loop yet: queue depth is refreshed only by refresh()")
            return None
        future = asyncio.run_coroutine_threadsafe(self._refresh_forever(interval), loop)

        def stop() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                future.cancel()  # thread-safe: it asks the loop to cancel the task

        return stop

    async def _refresh_forever(self, interval: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)

    def describe(self) -> list[GaugeMetricFamily]:
        """The metric names, so the registry can refuse duplicates."""
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges now: depth from the last refresh, the rest read from the node."""
        depth, refreshed, running, limit, paused = self._families()
        depths = self._depths  # one snapshot, even if a refresh lands meanwhile
        for queue in sorted(depths):
            for state in DEPTH_STATES:
                depth.add_metric([queue, state], depths[queue].get(state, 0))
        if self._refreshed is not None:
            refreshed.add_metric([], self._refreshed)
        # The loop adds and removes producers while this thread reads: copying the dict
        # is a single step under the GIL, iterating it would not be.
        producers = dict(self.app.producers)
        for queue, producer in sorted(producers.items(), key=lambda item: item[0]):
            running.add_metric([queue], len(producer.running))
            limit.add_metric([queue], producer.limit)
            paused.add_metric([queue], 1.0 if producer.paused else 0.0)
        yield from (depth, refreshed, running, limit, paused)

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        ns = self.namespace
        return (
            GaugeMetricFamily(f"{ns}_queue_depth", "Unfinished jobs by queue and state "
                              "(as of the last refresh)", labels=["queue", "state"]),
            GaugeMetricFamily(f"{ns}_queue_depth_refreshed_timestamp_seconds",
                              "When queue depth was last read (Unix time)"),
            GaugeMetricFamily(f"{ns}_queue_running", "Jobs running on this node",
                              labels=["queue"]),
            GaugeMetricFamily(f"{ns}_queue_limit", "Concurrency limit on this node",
                              labels=["queue"]),
            GaugeMetricFamily(f"{ns}_queue_paused", "1 if the queue is paused on this node",
                              labels=["queue"]),
        )  # fmt: skip


@dataclass
class MetricsServer:
    """What `serve` started: `port` is the bound port; `close()` stops it all."""

    metrics: PrometheusMetrics
    server: WSGIServer
    thread: threading.Thread
    addr: str
    port: int

    def close(self) -> None:
        """Stop the HTTP server and detach the metrics (idempotent)."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()
        self.metrics.detach()


def serve(
    app: Kerrera | None,
    port: int,
    *,
    addr: str = "0.0.0.0",
    registry: CollectorRegistry | None = None,
    refresh_interval: float = 5.0,
) -> MetricsServer:
    """Attach `PrometheusMetrics(app)` and serve `/metrics` over HTTP in a thread.

    Call it on the app's loop (before or after `app.start()`); port 0 picks a free port
    (see `.port`). `close()` stops the server and detaches the metrics. What
    `kerrera start --metrics-port` does.

    Example:
        server = serve(app, 9464)
        ...
        server.close()
    """
    metrics = PrometheusMetrics(app, registry=registry, refresh_interval=refresh_interval)
    metrics.attach()
    try:
        server, thread = prometheus_client.start_http_server(port, addr, metrics.registry)
    except BaseException as exc:
        metrics.detach()  # leave nothing attached
        if isinstance(exc, OSError):  # a port in use: the CLI prints this one line
            raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror}") from exc
        raise
    bound = int(server.server_port)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", addr, bound)
    return MetricsServer(metrics, server, thread, addr, bound)
