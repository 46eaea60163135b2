"""What subscribers receive: `Event`, and the wire form of events on the events channel.

Job events travel in batches (one notification per producer cycle carries every job it
started and every outcome it wrote), progress one report per notification, and
application messages as they are published. PostgreSQL caps a notification at 8000
bytes, so batches are cut to fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.notifier import payload

#: What a job's end state is called in an event.
KIND_OF_STATE = {
    "executing": "started",
    "completed": "completed",
    "retryable": "retrying",
    "discarded": "failed",
    "cancelled": "cancelled",
    "scheduled": "snoozed",
    "available": "released",
}
#: The largest notification sent (PostgreSQL refuses above 8000 bytes).
MAX_PAYLOAD = 7900
# Plain JSON size at which a batch is cut (compression then keeps it well under the cap).
_BATCH_BYTES = 6000


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, as a subscriber receives it.

    `kind` is `started`, `progress`, `completed`, `retrying` (failed, will retry),
    `failed` (failed for good: discarded), `cancelled`, `snoozed`, `released` (put back
    by a shutdown), `snapshot` (the job's state when a job subscription begins; `state`
    None when there is no such job, or not yet) or `message` (from `publish`). Job
    events carry `job_id`, `queue`, `worker`, `attempt` and `state`; `progress` events
    carry `progress` (`percent`, `message`, `data`, `at`); failures carry `error` (the
    last line of the error); messages carry `topic` and `payload`.
    """

    kind: str
    job_id: int | None = None
    queue: str | None = None
    worker: str | None = None
    attempt: int | None = None
    state: str | None = None
    progress: dict[str, Any] | None = None
    error: str | None = None
    topic: str | None = None
    payload: Any = None
    node: str | None = None

    @property
    def finished(self) -> bool:
        """True for a job's last event: completed, failed or cancelled."""
        return self.kind in ("completed", "failed", "cancelled") or (
            self.kind == "snapshot" and self.state in ("completed", "discarded", "cancelled")
        )


def job_entry(
    job_id: int, state: str, worker: str, attempt: int, error: str = ""
) -> dict[str, Any]:
    """One job in a batch: id, end state, worker, attempt (and a short error)."""
    entry: dict[str, Any] = {"id": job_id, "s": state, "w": worker, "a": attempt}
    if error:
        entry["err"] = short_error(error)
    return entry


def short_error(text: str) -> str:
    """The last non-empty line of an error text (the exception), at most 300 chars."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1].strip() if lines else "")[:300]


def job_batches(queue: str, node: str, entries: list[dict[str, Any]]) -> Iterator[str]:
    """Encoded notifications carrying `entries`, each under the size cap."""
    head = {"k": "job", "q": queue, "n": node}
    chunk: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        length = len(codec.dumps(entry)) + 1
        if chunk and size + length > _BATCH_BYTES:
            yield payload.encode({**head, "ev": chunk})
            chunk, size = [], 0
        chunk.append(entry)
        size += length
    if chunk:
        yield payload.encode({**head, "ev": chunk})


def progress_message(job_id: int, queue: str, worker: str, attempt: int, entry: Any) -> str:
    """The encoded notification of one progress report; too large is an error."""
    message = {"k": "progress", "id": job_id, "q": queue, "w": worker, "a": attempt, "p": entry}
    return _fitting(payload.encode(message), "progress report")


def app_message(topic: str, data: Any) -> str:
    """The encoded notification of `publish(topic, data)`."""
    if not isinstance(topic, str) or not topic:
        raise ConfigError(f"publish: topic must be a non-empty string, got {topic!r}")
    try:
        codec.dumps(data)
    except TypeError as exc:
        raise ConfigError(f"publish: payload is not JSON-serialisable: {exc}") from None
    return _fitting(payload.encode({"k": "msg", "t": topic, "p": data}), "published payload")


def _fitting(encoded: str, what: str) -> str:
    if len(encoded.encode()) > MAX_PAYLOAD:
        raise ConfigError(
            f"{what} is too large for a notification ({len(encoded.encode())} bytes "
            f"encoded, at most {MAX_PAYLOAD}): send less, or store it and send a reference"
        )
    return encoded


def decode(message: dict[str, Any]) -> list[Event]:
    """The events one notification carries (an unknown form carries none)."""
    kind = message.get("k")
    if kind == "job":
        queue, node = message.get("q"), message.get("n")
        return [
            Event(
                kind=KIND_OF_STATE.get(str(e.get("s")), str(e.get("s"))), job_id=e.get("id"),
                queue=queue, worker=e.get("w"), attempt=e.get("a"), state=e.get("s"),
                error=e.get("err"), node=node,
            )
            for e in message.get("ev", ())
            if isinstance(e, dict)
        ]  # fmt: skip
    if kind == "progress":
        return [
            Event(
                kind="progress", job_id=message.get("id"), queue=message.get("q"),
                worker=message.get("w"), attempt=message.get("a"), state="executing",
                progress=message.get("p"),
            )
        ]  # fmt: skip
    if kind == "msg":
        return [Event(kind="message", topic=message.get("t"), payload=message.get("p"))]
    return []
