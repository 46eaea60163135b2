"""Structured args: pydantic models and dataclasses validated by new() and handed to the
worker typed; bad stored args are recorded as an error on the job."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from conftest import eventually
from pydantic import BaseModel, Field

from kerrera import ConfigError, Job, JobState, Record, Worker, testing, worker


class Stems(BaseModel):
    """Args of the separation step."""

    track_id: int
    stems: list[str] = Field(default_factory=lambda: ["vocals", "drums"])
    quality: float = Field(default=0.5, ge=0, le=1)


@dataclasses.dataclass
class Download:
    """Args of the download step."""

    url: str
    retries: int = 3


@worker(queue="media")
async def separate(job: Job, args: Stems) -> Record:
    """Receives a Stems (inferred from the annotation)."""
    return Record({"type": type(args).__name__, "track": args.track_id, "n": len(args.stems)})


@worker(queue="media", args=Download)
def download(job: Job, args: Download) -> Record:
    """A sync worker with a dataclass given explicitly."""
    return Record({"type": type(args).__name__, "url": args.url, "retries": args.retries})


class Analyse(Worker, queue="media"):
    """A class worker taking typed args."""

    async def process(self, job: Job, args: Stems) -> Record:
        return Record({"quality": args.quality})


@worker(queue="media", args=Stems)
async def untyped(job: Job) -> Record:
    """Declares a model but takes only the job: args stay a dict."""
    return Record(job.args)


def test_new_validates_and_stores_plain_json() -> None:
    job = separate.new({"track_id": "7"})  # pydantic coerces "7" to 7
    assert job.args == {"track_id": 7, "stems": ["vocals", "drums"], "quality": 0.5}
    assert separate.new(Stems(track_id=3, quality=1)).args["quality"] == 1
    assert download.new(Download("https://x/y")).args == {"url": "https://x/y", "retries": 3}
    with pytest.raises(ConfigError, match=r"invalid args for .*separate.*track_id"):
        separate.new({"stems": []})
    with pytest.raises(ConfigError, match="quality"):
        Analyse.new({"track_id": 1, "quality": 3})
    with pytest.raises(ConfigError, match="retries"):
        download.new({"url": "u", "retries": "many"})
    with pytest.raises(ConfigError, match="option 'args'"):
        worker(queue="x", args=dict)(lambda job: None)


async def test_workers_receive_typed_args() -> None:
    one = await testing.perform_job(separate, {"track_id": 7, "stems": ["a", "b", "c"]})
    assert one.value == {"type": "Stems", "track": 7, "n": 3}
    two = await testing.perform_job(download, Download("https://x"))
    assert two.value == {"type": "Download", "url": "https://x", "retries": 3}
    three = await testing.perform_job(Analyse, {"track_id": 1, "quality": 0.9})
    assert three.value == {"quality": 0.9}
    four = await testing.perform_job(untyped, {"track_id": 2})
    assert four.value["track_id"] == 2


async def test_bad_stored_args_are_an_error_on_the_job(make_app: Any) -> None:
    app = make_app(queues={"media": 2})
    async with app:
        # as another service (or an Elixir node) might write it: no validation on the way in
        bad = await app.insert(
            Job(worker=separate.name, queue="media", args={"track_id": "x"}, max_attempts=1)
        )
        good = await app.insert(separate.new({"track_id": 5}))

        async def both_done() -> bool:
            jobs = [await app.get_job(bad.id), await app.get_job(good.id)]
            return all(j is not None and j.state.terminal for j in jobs)

        await eventually(both_done)
        failed, ok = await app.get_job(bad.id), await app.get_job(good.id)
    assert failed.state is JobState.DISCARDED
    assert (
        "invalid args for" in failed.errors[0]["error"] and "track_id" in failed.errors[0]["error"]
    )
    assert ok.state is JobState.COMPLETED and ok.meta["return"]["track"] == 5


async def test_assert_enqueued_accepts_a_model_instance(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        await app.insert(separate.new(Stems(track_id=9)))
        await testing.assert_enqueued(worker=separate, args=Stems(track_id=9))
        await testing.refute_enqueued(worker=separate, args=Stems(track_id=10))
