"""Telemetry: an event bus for job, producer and service events, and a JSON logger.

Attach a handler to the events you care about; Kerrera calls it synchronously as
`fn(event, measurements, metadata)`. See docs/telemetry.md for every event and what it
carries, and `kerrera.telemetry.prometheus` / `kerrera.telemetry.otel` for the optional
Prometheus and OpenTelemetry integrations.

Example:
    from kerrera import telemetry

    def slow_jobs(event, measurements, metadata):
        if measurements["duration"] > 5:
            print("slow:", metadata["worker"], measurements["duration"])

    telemetry.attach("slow-jobs", ["job.stop"], slow_jobs)
"""

from kerrera.telemetry._logger import (
    DEFAULT_EVENTS,
    DEFAULT_LOGGER,
    attach_default_logger,
    format_event,
)
from kerrera.telemetry.bus import (
    EVENTS,
    Handler,
    active,
    any_active,
    attach,
    detach,
    execute,
    handlers,
    timed,
)
from kerrera.telemetry.joblog import start_job_log, stop_job_log

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_LOGGER",
    "EVENTS",
    "Handler",
    "active",
    "any_active",
    "attach",
    "attach_default_logger",
    "detach",
    "execute",
    "format_event",
    "handlers",
    "start_job_log",
    "stop_job_log",
    "timed",
]
