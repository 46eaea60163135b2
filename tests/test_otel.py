"""OpenTelemetry tracing of real inserts and job runs, with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import eventually
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.scripted import Scripted

from kerrera import Job, telemetry, worker
from kerrera.telemetry import otel

WORKER = Scripted.new({}).worker
# The provider of the running test, for the workers below to make their own spans with.
_provider: list[TracerProvider] = []


@worker(queue="default")
async def makes_a_span(job: Job) -> None:
    with trace.get_tracer("app", tracer_provider=_provider[0]).start_as_current_span("inner"):
        await asyncio.sleep(0)


@worker(queue="default")
def makes_a_span_in_a_thread(job: Job) -> str:
    with trace.get_tracer("app", tracer_provider=_provider[0]).start_as_current_span("inner"):
        return threading.current_thread().name


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans end up here; the handlers are always detached at teardown."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    _provider[:] = [provider]
    yield spans
    otel.uninstrument()
    _provider.clear()
    provider.shutdown()


def _span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan | None:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) <= 1, f"more than one {name!r} span"
    return found[0] if found else None


async def _finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    span = await eventually(lambda: _span(exporter, name))
    assert span is not None
    return span


async def test_a_run_is_a_new_trace_linked_to_the_insert(
    make_app: Any, exporter: InMemorySpanExporter
) -> None:
    otel.instrument(_provider[0])
    app = make_app(queues={"default": 2})
    shared = {"from": "web"}
    with trace.get_tracer("app", tracer_provider=_provider[0]).start_as_current_span("request"):
        job = await app.insert(Scripted.new({"do": "ok"}, meta=shared))
    assert shared == {"from": "web"}  # the caller's dict is left alone
    async with app:
        run = await _finished(exporter, f"process {WORKER}")
    request = _span(exporter, "request")
    insert = _span(exporter, "kerrera insert")
    assert request is not None and insert is not None
    assert insert.kind is SpanKind.PRODUCER
    assert insert.parent is not None and insert.parent.span_id == request.context.span_id
    assert run.kind is SpanKind.CONSUMER
    assert run.parent is None and run.context.trace_id != request.context.trace_id
    assert [link.context.span_id for link in run.links] == [insert.context.span_id]
    assert run.links[0].context.trace_id == request.context.trace_id
    assert run.attributes is not None
    assert {k: run.attributes[k] for k in (
        "messaging.system", "messaging.destination.name", "messaging.operation",
        "messaging.message.id", "kerrera.job.worker", "kerrera.job.attempt",
        "kerrera.job.max_attempts", "kerrera.node", "kerrera.job.state",
    )} == {
        "messaging.system": "kerrera", "messaging.destination.name": "default",
        "messaging.operation": "process", "messaging.message.id": str(job.id),
        "kerrera.job.worker": WORKER, "kerrera.job.attempt": 1, "kerrera.job.max_attempts": 3,
        "kerrera.node": app.node, "kerrera.job.state": "completed",
    }  # fmt: skip
    assert run.status.status_code is StatusCode.UNSET
    # The context travels in the row, where another process (or Oban) would find it.
    saved = await app.get_job(job.id)
    assert saved.meta["from"] == "web"
    traceparent = saved.meta[otel.META_KEY]["traceparent"]
    assert traceparent.split("-")[1] == format(request.context.trace_id, "032x")


async def test_parent_true_makes_the_run_a_child_of_the_insert(
    make_app: Any, exporter: InMemorySpanExporter
) -> None:
    otel.instrument(_provider[0], parent=True)
    app = make_app(queues={"default": 2})
    async with app:
        with trace.get_tracer("app", tracer_provider=_provider[0]).start_as_current_span("req"):
            await app.insert(Scripted.new({}))
        run = await _finished(exporter, f"process {WORKER}")
    insert = _span(exporter, "kerrera insert")
    assert insert is not None
    assert run.parent is not None and run.parent.span_id == insert.context.span_id
    assert run.context.trace_id == insert.context.trace_id
    assert not run.links


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_spans_a_worker_makes_are_children_of_its_run(
    make_app: Any, exporter: InMemorySpanExporter, kind: str
) -> None:
    otel.instrument(_provider[0])
    app = make_app(queues={"default": 2})
    chosen = makes_a_span if kind == "async" else makes_a_span_in_a_thread
    async with app:
        await app.insert(chosen.new({}))
        run = await _finished(exporter, f"process {chosen.new({}).worker}")
    inner = _span(exporter, "inner")
    assert inner is not None and inner.parent is not None
    assert inner.parent.span_id == run.context.span_id
    assert inner.context.trace_id == run.context.trace_id


async def test_a_failing_run_records_the_exception_and_an_error_status(
    make_app: Any, exporter: InMemorySpanExporter
) -> None:
    otel.instrument(_provider[0])
    app = make_app(queues={"default": 2})
    async with app:
        await app.insert(Scripted.new({"do": "error", "message": "boom"}, max_attempts=1))
        run = await _finished(exporter, f"process {WORKER}")
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "RuntimeError: boom"
    [event] = [e for e in run.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert event.attributes["exception.message"] == "boom"
    assert run.attributes is not None
    assert run.attributes["kerrera.job.state"] == "discarded"
    assert run.attributes["kerrera.job.error_kind"] == "error"


async def test_a_sync_insert_from_a_thread_without_a_loop_carries_its_trace(
    make_app: Any, exporter: InMemorySpanExporter
) -> None:
    otel.instrument(_provider[0], insert_spans=False)
    app = make_app()

    def insert_in_a_span() -> tuple[Job, int]:
        tracer = trace.get_tracer("app", tracer_provider=_provider[0])
        with tracer.start_as_current_span("script") as span:
            return app.sync.insert(Scripted.new({})), span.get_span_context().span_id

    job, span_id = await asyncio.to_thread(insert_in_a_span)
    saved = await app.get_job(job.id)
    assert saved.meta[otel.META_KEY]["traceparent"].split("-")[2] == format(span_id, "016x")
    assert _span(exporter, "kerrera insert") is None  # insert_spans=False


async def test_unique_jobs_keyed_on_meta_still_conflict(
    make_app: Any, exporter: InMemorySpanExporter
) -> None:
    otel.instrument(_provider[0])
    app = make_app()
    unique = {"period": 3600, "fields": ["args", "meta", "worker"]}
    first = await app.insert(Scripted.new({"n": 1}, unique=unique))
    second = await app.insert(Scripted.new({"n": 1}, unique=unique))
    assert second.conflict and second.id == first.id
    assert otel.META_KEY not in first.meta


async def test_uninstrument_detaches(make_app: Any, exporter: InMemorySpanExporter) -> None:
    otel.instrument(_provider[0])
    assert otel.HANDLER_ID in telemetry.handlers()
    assert otel.uninstrument()
    assert otel.HANDLER_ID not in telemetry.handlers()
    assert not otel.uninstrument()
    app = make_app()
    job = await app.insert(Scripted.new({}))
    assert otel.META_KEY not in job.meta
    assert not exporter.get_finished_spans()


def test_importing_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # None: "not installed"
    monkeypatch.delitem(sys.modules, "kerrera.telemetry.otel")
    with pytest.raises(ImportError, match=r"pip install 'kerrera\[otel\]'"):
        importlib.import_module("kerrera.telemetry.otel")
