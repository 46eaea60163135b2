"""Background jobs of the shop. `manage.py kerrera start` imports this module
(settings.KERRERA["modules"]); the workers run there, never in a web request."""

from __future__ import annotations

import logging

from django.utils import timezone

from kerrera import Cancel, Job
from kerrera.contrib.django import worker
from orders.models import Order

log = logging.getLogger(__name__)


@worker(queue="mail", max_attempts=5)
def send_confirmation(job: Job) -> Cancel | None:
    """E-mail the customer, then mark the order confirmed. A sync function: it runs in the
    node's thread pool and uses the ORM as any Django code does."""
    order = Order.objects.filter(pk=job.args["order_id"]).first()
    if order is None:
        return Cancel("the order no longer exists")
    if order.status == "confirmed":
        return None  # an earlier run finished the work: jobs run at least once
    log.info("mailing a confirmation for %s", order)  # a real shop would send it here
    Order.objects.filter(pk=order.pk).update(status="confirmed", confirmed_at=timezone.now())
    return None


@worker(queue="mail")
async def send_reminder(job: Job) -> None:
    """Async workers use Django's async ORM (`aget`, `aupdate`, ...)."""
    order = await Order.objects.aget(pk=job.args["order_id"])
    log.info("reminding the customer of %s", order)
