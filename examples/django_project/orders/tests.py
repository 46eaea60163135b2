"""The example's own tests: `python manage.py test` (a real PostgreSQL; see README.md)."""

from __future__ import annotations

import asyncio

from django.test import TransactionTestCase

from kerrera import Job, JobState
from kerrera.contrib.django import build_app, get_app, reset_app
from orders.models import Order
from orders.workers import send_confirmation, send_reminder


def run_jobs_until_finished(job_id: int, timeout: float = 30.0) -> Job:
    """Run a node in this process (the workers' queues) until the job has finished."""

    async def run() -> Job:
        async with build_app(queues={"mail": 2}) as node, asyncio.timeout(timeout):
            while True:
                job = await node.get_job(job_id)
                if job is not None and job.state.terminal:
                    return job
                await asyncio.sleep(0.05)

    return asyncio.run(run())


def jobs_of(worker_name: str) -> list[Job]:
    async def listing() -> list[Job]:
        async with build_app(queues={}) as app:  # no queues: reads, runs nothing
            return await app.list_jobs(worker=worker_name, limit=1000)

    return asyncio.run(listing())


# TransactionTestCase: the view's transaction really commits (or rolls back), as in
# production; a TestCase would wrap it in a transaction of its own.
class PlaceOrderTests(TransactionTestCase):
    def tearDown(self) -> None:
        reset_app()  # its pool would keep the test database from being dropped

    def test_order_and_its_job_are_committed_together(self) -> None:
        response = self.client.post("/orders/", {"item": "tea", "quantity": 2})
        self.assertEqual(response.status_code, 201)
        body = response.json()
        order = Order.objects.get(pk=body["order"])
        job = get_app().sync.get_job(body["job"])
        assert job is not None
        self.assertEqual(job.worker, send_confirmation.name)
        self.assertEqual(job.queue, "mail")
        self.assertEqual(job.args, {"order_id": order.pk})
        self.assertEqual(job.state, JobState.AVAILABLE)

    def test_a_failed_order_leaves_no_job_behind(self) -> None:
        before = len(jobs_of(send_confirmation.name))
        response = self.client.post("/orders/", {"item": "tea", "quantity": 50})
        self.assertEqual(response.status_code, 409)
        self.assertFalse(Order.objects.exists())
        self.assertEqual(len(jobs_of(send_confirmation.name)), before)

    def test_the_job_confirms_the_order(self) -> None:
        body = self.client.post("/orders/", {"item": "coffee", "quantity": 1}).json()
        job = run_jobs_until_finished(body["job"])
        self.assertEqual(job.state, JobState.COMPLETED)
        order = Order.objects.get(pk=body["order"])
        self.assertEqual(order.status, "confirmed")
        self.assertIsNotNone(order.confirmed_at)

    def test_the_job_of_a_deleted_order_is_cancelled(self) -> None:
        body = self.client.post("/orders/", {"item": "cake", "quantity": 1}).json()
        Order.objects.filter(pk=body["order"]).delete()
        job = run_jobs_until_finished(body["job"])
        self.assertEqual(job.state, JobState.CANCELLED)

    def test_the_async_view_enqueues_a_reminder(self) -> None:
        order = Order.objects.create(item="tea", quantity=1)
        response = self.client.post(f"/orders/{order.pk}/remind/")
        self.assertEqual(response.status_code, 202)
        job = get_app().sync.get_job(response.json()["job"])
        assert job is not None
        self.assertEqual(job.worker, send_reminder.name)
        self.assertEqual(job.state, JobState.SCHEDULED)
