"""Testing modes: `inline` runs inserted jobs at once in the caller, `manual` only
inserts them; either way the app runs no queues or services of its own."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from kerrera.core.errors import ConfigError

MODES = ("inline", "manual")

_UNSET = "unset"  # no mode() block in force: the app's own option decides
_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kerrera_testing", default=_UNSET
)


def check_mode(value: object, option: str = "testing") -> str | None:
    """None, "inline" or "manual"; anything else is a `ConfigError` naming `option`."""
    if value is None or value in MODES:
        return value
    raise ConfigError(f"option {option!r} must be 'inline', 'manual' or None, got {value!r}")


@contextmanager
def mode(name: str | None) -> Iterator[None]:
    """Switch the testing mode inside the block (it wins over `Kerrera(testing=...)`).

    `"inline"`: every job inserted runs at once in the caller, through the same executor
    as on a node, and the insert returns it in its end state (completed, retryable with
    its error recorded, snoozed, ...). `"manual"`: jobs are inserted and left for the
    test to inspect (`assert_enqueued`) or run (`app.drain_queue`). An app started in
    either mode runs no queues, cron or other services. `None` means normal running,
    whatever the app's `testing` option says.

    Example:
        with testing.mode("inline"):
            job = await app.insert(SendEmail.new({"to": "a@b.c"}))
        assert job.state == "completed"
    """
    token = _MODE.set(check_mode(name, "mode"))
    try:
        yield
    finally:
        _MODE.reset(token)


def current_mode(configured: str | None) -> str | None:
    """The mode in force: the innermost `mode()` block's, else the app's option."""
    chosen = _MODE.get()
    return configured if chosen == _UNSET else chosen
