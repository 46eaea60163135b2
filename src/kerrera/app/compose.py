"""Batches and chains on `Kerrera`: inserting a batch, and handles to act on a batch or
a chain by id (`app.batch(id)`, `app.chain(id)`). The bookkeeping itself is done by the
database's triggers (see `kerrera.engine.migrations.compose`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from kerrera.core.batch import Batch, check_batch_id, member_jobs
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.core.worker import check_main_workers
from kerrera.engine.compose import BatchCounts, ChainCounts

if TYPE_CHECKING:
    from kerrera.core.config import Config
    from kerrera.engine.postgres import PostgresEngine


class _App(Protocol):
    """What these methods need of the `Kerrera` they are mixed into."""

    config: Config

    @property
    def testing_mode(self) -> str | None: ...

    async def _open(self) -> PostgresEngine: ...


def check_batch(batch: object, testing_mode: str | None, queues: Mapping[str, int]) -> Batch:
    """Refuse what cannot be inserted as a batch: not a `Batch`; testing mode "inline"
    (the jobs would run before the batch could count them: use "manual" and
    `drain_queue`); workers defined in a script run as `__main__` (see the worker)."""
    if not isinstance(batch, Batch):
        raise ConfigError(f"insert_batch takes a Batch, got {batch!r}")
    if testing_mode == "inline":
        raise ConfigError(
            "testing mode 'inline' cannot run a batch: its callbacks come from the "
            "database's trigger (use testing='manual' and drain_queue)"
        )
    if testing_mode is None:
        check_main_workers(batch.jobs, queues)
    return batch


class BatchHandle:
    """A batch by id: `append` jobs while it is open, `close` it, read its `status`.

    Example:
        batch = app.batch("billing-2026-12")
        await batch.append([Bill.new({"account": a}) for a in more])
        await batch.close()
        print((await batch.status()).completed)
    """

    def __init__(self, app: _App, batch_id: str) -> None:
        self._app = app
        self.batch_id = check_batch_id(batch_id)

    async def append(
        self, jobs: Iterable[Job], *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[Job]:
        """Add jobs to the open batch, in one transaction (on `conn`: the caller's);
        returns them saved. A closed or unknown batch is a `ConfigError`."""
        members = member_jobs(jobs, self.batch_id)
        if not members:
            return []
        engine = await self._app._open()
        return await engine.append_batch(self.batch_id, members, conn)

    async def close(self) -> None:
        """Seal the batch: no more appends; `attempted`, `completed` and `exhausted` fire
        now if they are due, else when the last job gets there. Closing twice is fine;
        an unknown batch is a `LookupError`."""
        if not await (await self._app._open()).close_batch(self.batch_id):
            raise LookupError(f"no batch {self.batch_id!r}")

    async def status(self) -> BatchCounts:
        """The batch's counts (see `BatchCounts`); `LookupError` if there is no such batch."""
        found = await (await self._app._open()).batch_status(self.batch_id)
        if found is None:
            raise LookupError(f"no batch {self.batch_id!r}")
        return found

    def __repr__(self) -> str:
        return f"<BatchHandle {self.batch_id}>"


class ChainHandle:
    """A chain by id (`meta["chain_id"]`: see `chain_id`): its `status`; for a chain a
    failed link holds, `resume` (run that link again) or `release` (skip it).

    Example:
        chain = app.chain(chain_id(Webhook, {"account_id": 7}))  # kerrera.chain_id
        if (await chain.status()).held:
            await chain.release()  # skip the failed link, go on with the next
    """

    def __init__(self, app: _App, chain_id: str) -> None:
        if not isinstance(chain_id, str) or not chain_id:
            raise ConfigError(f"a chain id is a non-empty string, got {chain_id!r}")
        self._app = app
        self.chain_id = chain_id

    async def status(self) -> ChainCounts:
        """The chain's counts (see `ChainCounts`); `LookupError` if it has no links."""
        found = await (await self._app._open()).chain_status(self.chain_id)
        if found is None:
            raise LookupError(f"no chain {self.chain_id!r}")
        return found

    async def release(self) -> int | None:
        """Let a held chain go on without its failed link (which stays as it is): the
        next link is released unless one runs. Returns the id of the link released.
        (Retrying the failed link instead resumes the chain when it completes.)"""
        try:
            return await (await self._app._open()).release_chain(self.chain_id)
        except ConfigError as exc:
            raise LookupError(str(exc)) from exc

    async def resume(self) -> Job | None:
        """Run the failed link that holds the chain again (its args as they were); when it
        completes, the chain goes on. Returns it, or None when the chain is not held."""
        status = await self.status()
        if status.held_by is None:
            return None
        retried = await (await self._app._open()).retry_jobs([status.held_by])
        return retried[0] if retried else None

    def __repr__(self) -> str:
        return f"<ChainHandle {self.chain_id}>"


class ComposeMixin:
    """Batches and chains, mixed into `Kerrera`."""

    async def insert_batch(
        self: _App, batch: Batch, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[Job]:
        """Insert a `Batch`: its row and its jobs, in one transaction (on `conn`: the
        caller's). Returns the jobs saved. A batch id in use is a `ConfigError`.

        Example: `jobs = await app.insert_batch(Batch(jobs, callbacks={"completed": cb}))`.
        """
        check_batch(batch, self.testing_mode, self.config.queues)
        engine = await self._open()
        return await engine.insert_batch(
            batch.batch_id, batch.callbacks, batch.open, batch.jobs, conn
        )

    def batch(self: _App, batch_id: str) -> BatchHandle:
        """A handle on the batch `batch_id` (see `BatchHandle`)."""
        return BatchHandle(self, batch_id)

    def chain(self: _App, chain_id: str) -> ChainHandle:
        """A handle on the chain `chain_id` (see `ChainHandle`, and `chain_id()`)."""
        return ChainHandle(self, chain_id)
