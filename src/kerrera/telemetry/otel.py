"""OpenTelemetry tracing: a span for each job run, linked to the trace that inserted it.

Needs `opentelemetry-api`: `pip install 'kerrera[otel]'` (plus an SDK and exporter of
your choice). `instrument()` attaches telemetry handlers that:

- on insert: start a PRODUCER span "kerrera insert" (unless `insert_spans=False`) and
  write the trace context into each job's `meta["otel"]` (`META_KEY`), as the W3C
  `traceparent`/`tracestate` entries of the global propagator;
- on each run: start a CONSUMER span "process <worker>" with a link to that context (or
  as its child with `parent=True`), current while the worker runs, so the worker's own
  spans (and those of instrumented libraries it calls) are its children;
- on failure: record the exception and set the ERROR status; at the end set
  `kerrera.job.state` and end the span.

Example:
    from kerrera.telemetry import otel

    otel.instrument()  # the global tracer provider
    ...
    otel.uninstrument()
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
except ImportError as exc:  # an optional extra: say how to get it
    raise ImportError(
        "kerrera.telemetry.otel needs opentelemetry-api: pip install 'kerrera[otel]'"
    ) from exc

from kerrera import telemetry
from kerrera.core.job import Job
from kerrera.core.version import VERSION

#: The `meta` key that carries the inserting trace context (a dict of propagation headers).
META_KEY = "otel"
#: The telemetry handler id `instrument` attaches.
HANDLER_ID = "kerrera.otel"
_EVENTS = ("insert.start", "insert", "job.start", "job.exception", "job.stop")

_tracing: _Tracing | None = None
# The insert span of the insert running in this task or thread: `insert.start` and
# `insert` are emitted by the same call, in the same context.
_inserting: ContextVar[tuple[Span, Token[Any]] | None] = ContextVar(
    "kerrera_otel_insert", default=None
)


def instrument(
    tracer_provider: trace.TracerProvider | None = None,
    *,
    parent: bool = False,
    insert_spans: bool = True,
) -> None:
    """Trace inserts and job runs (replacing any earlier `instrument()`).

    Options:
      tracer_provider (the global one): where spans go.
      parent (False): a run's span is a new trace *linked* to the inserting one (the
        messaging convention: a job may run long after, many times); True makes it a
        child of the inserting span instead, for one trace from request to job.
      insert_spans (True): False writes the caller's current context into `meta`
        without a "kerrera insert" span of its own.

    Example:
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        otel.instrument(provider, parent=True)
    """
    global _tracing
    uninstrument()
    tracer = trace.get_tracer("kerrera", VERSION, tracer_provider)
    _tracing = _Tracing(tracer, parent=parent, insert_spans=insert_spans)
    telemetry.attach(HANDLER_ID, _EVENTS, _tracing.handle)


def uninstrument() -> bool:
    """Stop tracing; spans of jobs still running are ended now. False if not traced."""
    global _tracing
    tracing, _tracing = _tracing, None
    telemetry.detach(HANDLER_ID)
    if tracing is None:
        return False
    for span, _token in list(tracing.running.values()):
        span.end()
    tracing.running.clear()
    return True


class _Tracing:
    """The handlers' state: the tracer, options and the spans of running jobs."""

    def __init__(self, tracer: trace.Tracer, *, parent: bool, insert_spans: bool) -> None:
        self.tracer = tracer
        self.parent = parent
        self.insert_spans = insert_spans
        #: id(job) -> (its span, the token that made it current). Keyed by the Job object
        #: rather than its id: a job run again on this node while a stale run lingers is
        #: another object.
        self.running: dict[int, tuple[Span, Token[Any]]] = {}

    def handle(self, event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        if event == "job.start":
            self.job_start(metadata, measurements)
        elif event == "job.exception":
            self.job_exception(metadata)
        elif event == "job.stop":
            self.job_stop(metadata)
        elif event == "insert.start":
            self.insert_start(metadata["jobs"])
        elif event == "insert":
            self.insert_stop(measurements, metadata)

    # -- inserts --------------------------------------------------------------------------
    def insert_start(self, jobs: list[Job]) -> None:
        carrier: dict[str, str] = {}
        if self.insert_spans:
            queues = {job.queue for job in jobs}
            span = self.tracer.start_span(
                "kerrera insert", kind=SpanKind.PRODUCER, attributes={
                    "messaging.system": "kerrera", "messaging.operation": "publish",
                    "messaging.operation.type": "send",
                    "messaging.batch.message_count": len(jobs),
                    **({"messaging.destination.name": next(iter(queues))}
                       if len(queues) == 1 else {}),
                },
            )  # fmt: skip
            ctx = trace.set_span_in_context(span)
            # Current during the insert, so spans of the database driver nest under it.
            _inserting.set((span, otel_context.attach(ctx)))
            propagate.inject(carrier, context=ctx)
        else:
            propagate.inject(carrier)
        if not carrier:  # no trace going on: nothing to link to
            return
        for job in jobs:
            if isinstance(job.meta, dict) and not _hashes_meta(job):
                # A new dict: the caller's `meta=` may be one dict shared by many jobs.
                job.meta = {**job.meta, META_KEY: dict(carrier)}

    def insert_stop(self, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        state = _inserting.get()
        if state is None:
            return
        _inserting.set(None)
        span, token = state
        jobs = metadata["jobs"]
        error = metadata.get("error")
        if error is None and len(jobs) == 1 and jobs[0].id is not None:
            span.set_attribute("messaging.message.id", str(jobs[0].id))
        span.set_attribute("kerrera.insert.conflicts", int(measurements.get("conflicts", 0)))
        if isinstance(error, BaseException):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()
        otel_context.detach(token)

    # -- job runs -------------------------------------------------------------------------
    def job_start(self, metadata: dict[str, Any], measurements: dict[str, Any]) -> None:
        job: Job = metadata["job"]
        inserted = _inserting_context(job)
        links = []
        if self.parent and inserted is not None:
            start_in = inserted
        else:
            # A root: not a child of whatever the node's own task had current.
            start_in = otel_context.Context()
            if inserted is not None:
                links.append(Link(trace.get_current_span(inserted).get_span_context()))
        span = self.tracer.start_span(
            f"process {metadata['worker']}", context=start_in, kind=SpanKind.CONSUMER,
            links=links, attributes={
                "messaging.system": "kerrera", "messaging.operation": "process",
                "messaging.operation.type": "process",
                "messaging.destination.name": metadata["queue"],
                "messaging.message.id": str(metadata["id"]),
                "kerrera.job.worker": metadata["worker"],
                "kerrera.job.attempt": metadata["attempt"],
                "kerrera.job.max_attempts": metadata["max_attempts"],
                "kerrera.job.priority": metadata["priority"],
                "kerrera.job.queue_time": float(measurements.get("queue_time", 0.0)),
                "kerrera.node": metadata["node"],
            },
        )  # fmt: skip
        # job.start and job.stop run in the job's own task: what is attached here is
        # current for the worker (and copied into a sync worker's thread) until job.stop.
        token = otel_context.attach(trace.set_span_in_context(span))
        self.running[id(job)] = (span, token)

    def job_exception(self, metadata: dict[str, Any]) -> None:
        entry = self.running.get(id(metadata["job"]))
        if entry is None:
            return
        span = entry[0]
        exception = metadata.get("exception")
        if isinstance(exception, BaseException):
            span.record_exception(exception)
        else:  # a failure with no exception object (a result that could not be stored)
            span.add_event("exception", {"exception.message": str(metadata.get("error", ""))})
        span.set_attribute("kerrera.job.error_kind", str(metadata.get("kind", "error")))
        span.set_status(Status(StatusCode.ERROR, str(metadata.get("error", ""))))

    def job_stop(self, metadata: dict[str, Any]) -> None:
        entry = self.running.pop(id(metadata["job"]), None)
        if entry is None:
            return
        span, token = entry
        span.set_attribute("kerrera.job.state", str(metadata["state"]))
        span.end()
        otel_context.detach(token)


def _inserting_context(job: Job) -> otel_context.Context | None:
    """The context written into the job's meta at insert, if there is a valid one."""
    carrier = job.meta.get(META_KEY) if isinstance(job.meta, dict) else None
    if not isinstance(carrier, dict):
        return None
    extracted = propagate.extract(carrier)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def _hashes_meta(job: Job) -> bool:
    # A unique job whose key covers all of `meta` would never conflict again if each
    # insert wrote a different trace context into it: such jobs are left unlinked.
    unique = job.unique
    if unique is None or "meta" not in unique.fields:
        return False
    return unique.keys is None or META_KEY in unique.keys
