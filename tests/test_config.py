"""Bad options fail at construction with a message that names the option."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kerrera import ConfigError, Kerrera, Worker, default_backoff, worker
from kerrera.cli import parse_queues


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queus": {"a": 1}}, "unknown option 'queus', did you mean 'queues'"),
        ({"queues": {"a": 0}}, "option 'queues': limit of queue 'a'"),
        ({"queues": {"": 1}}, "option 'queues'"),
        ({"queues": ["a"]}, "option 'queues' must be a dict"),
        ({"prefix": "bad-name;"}, "option 'prefix'"),
        ({"shutdown_grace_period": -1}, "option 'shutdown_grace_period'"),
        ({"poll_interval": 0}, "option 'poll_interval'"),
        ({"pool_size": 0}, "option 'pool_size'"),
        ({"notifier": "redis"}, "option 'notifier'"),
        ({"migrate": "yes"}, "option 'migrate'"),
    ],
)
def test_invalid_app_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Kerrera("postgresql://unused", **options)


def test_invalid_worker_options() -> None:
    with pytest.raises(ConfigError, match="'priority'"):

        class TooLow(Worker, priority=10):
            pass

    with pytest.raises(ConfigError, match="'max_attempts'"):
        worker(max_attempts=0)(lambda job: None)
    with pytest.raises(ConfigError, match="'timeout'"):
        worker(timeout=-1)(lambda job: None)
    with pytest.raises(ConfigError, match="'queue'"):
        worker(queue="")(lambda job: None)


def test_invalid_job_options() -> None:
    @worker
    def noop(job: object) -> None: ...

    with pytest.raises(ConfigError, match="'args'"):
        noop.new({"when": object()})
    with pytest.raises(ConfigError, match="'args'"):
        noop.new([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'schedule_in'"):
        noop.new({}, schedule_in=-5)
    with pytest.raises(ConfigError, match="either 'scheduled_at' or 'schedule_in'"):
        from datetime import datetime

        noop.new({}, schedule_in=5, scheduled_at=datetime(2030, 1, 1))
    with pytest.raises(ConfigError, match="'tags'"):
        noop.new({}, tags="audio")


def test_worker_names_are_importable_paths() -> None:
    @worker(queue="media", max_attempts=5, priority=1, tags=["Audio"], timeout=600)
    async def separate(job: object) -> None: ...

    class Analyse(Worker, queue="analysis", max_attempts=3):
        async def process(self, job: object) -> None: ...

    job = separate.new({"track_id": 7})
    assert job.worker.endswith("test_worker_names_are_importable_paths.<locals>.separate")
    assert (job.queue, job.max_attempts, job.priority, job.tags) == ("media", 5, 1, ["audio"])
    assert separate.options.timeout == 600.0 and separate.is_async
    assert Analyse.new({}).queue == "analysis" and Analyse.name.endswith("Analyse")


def test_parse_queues() -> None:
    assert parse_queues("default:10,media:2") == {"default": 10, "media": 2}
    assert parse_queues("solo") == {"solo": 10}
    with pytest.raises(ConfigError, match="--queues"):
        parse_queues("media:many")


@given(attempt=st.integers(1, 100), max_attempts=st.integers(1, 100))
def test_default_backoff_follows_obans_formula(attempt: int, max_attempts: int) -> None:
    assume(attempt <= max_attempts)  # the table's attempt_range constraint
    scaled = round(attempt / max_attempts * 20) if max_attempts > 20 else attempt
    base = 15 + 2**scaled
    delay = default_backoff(attempt, max_attempts)
    assert base <= delay <= base * 1.1
    assert delay <= 15 + 2**20 * 1.1 + 2
