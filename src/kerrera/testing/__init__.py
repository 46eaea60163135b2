"""Testing helpers: run jobs inline or not at all, check what was enqueued, run one job
without a database, and drain queues in the test.

They use the real database (every assertion is a query of the jobs table), so what a
test sees is what production does. See docs/testing.md.

Example:
    from kerrera import testing

    async def test_signup_sends_welcome(app):
        await signup(app, "a@b.c")
        await testing.assert_enqueued(worker=SendWelcome, args={"to": "a@b.c"})
        assert (await app.drain_queue("mail"))["completed"] == 1
"""

from kerrera.core.modes import MODES, current_mode, mode
from kerrera.testing._asserts import all_enqueued, assert_enqueued, refute_enqueued
from kerrera.testing._perform import Outcome, perform_job
from kerrera.testing._sync import SyncTesting

#: Sync twins of the helpers, for tests without an event loop.
sync = SyncTesting()

__all__ = [
    "MODES",
    "Outcome",
    "SyncTesting",
    "all_enqueued",
    "assert_enqueued",
    "current_mode",
    "mode",
    "perform_job",
    "refute_enqueued",
    "sync",
]
