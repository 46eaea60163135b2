"""A bounded pool of daemon threads for sync workers.

Not `concurrent.futures.ThreadPoolExecutor`: its threads are joined at interpreter exit,
so one stuck sync job would keep a node from exiting after shutdown gave up on it.
Here a job still running when the node exits is simply abandoned; its row was already put
back to `available` by the shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()


class DaemonThreadPool:
    """Runs blocking callables on at most `size` daemon threads, started on demand.

    A call whose future was cancelled before a thread picked it up (by a timeout, a
    shutdown or a pkill) is skipped, never run late.
    """

    def __init__(self, size: int, name: str = "kerrera-sync") -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._name = name
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads blocked waiting for a call
        self._pending = 0  # calls queued and not yet taken by a thread
        self._lock = threading.Lock()

    def run(
        self, func: Callable[..., Any], *args: Any
    ) -> tuple[asyncio.Future[None], asyncio.Future[Any], asyncio.Future[None]]:
        """Schedule `func(*args)`. Returns three futures on the calling loop: `started`,
        resolved when a thread starts the call (so timeouts count running time, not
        queueing); `future`, with its result; and `finished`, resolved when the thread is
        done with it, even after `future` was cancelled (a thread cannot be stopped, and
        its slot stays taken until then)."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        future: asyncio.Future[Any] = loop.create_future()
        finished: asyncio.Future[None] = loop.create_future()
        self._work.put((loop, started, future, finished, contextvars.copy_context(), func, args))
        with self._lock:
            # A new thread only when more calls wait than threads wait for calls.
            self._pending += 1
            if self._pending > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._loop, daemon=True, name=f"{self._name}-{len(self._threads)}"
                )
                self._threads.append(thread)
                thread.start()
        return started, future, finished

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy ones exit after their current job."""
        for _ in self._threads:
            self._work.put(_STOP)

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._idle += 1  # idle only while blocked in get()
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                if item is not _STOP:
                    self._pending -= 1
            if item is _STOP:
                return
            loop, started, future, finished, context, func, args = item
            if not future.cancelled():  # a racy read, but only ever from pending to done
                _call_soon(loop, _settle, started, None, None)
                try:
                    result = context.run(_dispatched, loop, func, args)
                except BaseException as exc:
                    _call_soon(loop, _finish, finished, future, None, exc)
                else:
                    _call_soon(loop, _finish, finished, future, result, None)
            else:
                _call_soon(loop, _settle, finished, None, None)


#: Inside a call run by the pool: the event loop that dispatched it (a sync worker's
#: `job.progress_sync()` hands its report back to that loop).
DISPATCHER: contextvars.ContextVar[asyncio.AbstractEventLoop] = contextvars.ContextVar(
    "kerrera_dispatcher"
)


def _dispatched(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], args: Any) -> Any:
    DISPATCHER.set(loop)  # in the call's own copied context
    return func(*args)


def _call_soon(loop: asyncio.AbstractEventLoop, func: Callable[..., Any], *args: Any) -> None:
    # The loop may have closed (the node stopped without waiting): nobody listens then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(func, *args)


def _finish(
    finished: asyncio.Future[None], future: asyncio.Future[Any], result: Any,
    exc: BaseException | None,
) -> None:  # fmt: skip
    # `finished` first: whoever awaits `future` sees the thread already free.
    _settle(finished, None, None)
    _settle(future, result, exc)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled by shutdown or a timeout meanwhile
        return
    if isinstance(exc, StopIteration):  # a future cannot carry StopIteration
        exc = RuntimeError(f"the job raised StopIteration: {exc!r}")
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
