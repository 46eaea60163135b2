"""Views that write an order and enqueue its job in one transaction."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import aget_object_or_404, get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from kerrera.contrib.django import ainsert, insert
from orders.models import Order
from orders.workers import send_confirmation, send_reminder

#: More than this in one order and "stock reservation" fails, after the job was inserted.
STOCK = 10


class OutOfStockError(Exception):
    pass


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Create an order and its confirmation job together: if anything in the block fails,
    neither exists, so the worker never mails about an order that was not placed."""
    item = request.POST.get("item", "tea")
    quantity = int(request.POST.get("quantity", "1"))
    try:
        with transaction.atomic():
            order = Order.objects.create(item=item, quantity=quantity)
            job = insert(send_confirmation.new({"order_id": order.pk}))
            _reserve_stock(order)
    except OutOfStockError as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    return JsonResponse({"order": order.pk, "job": job.id}, status=201)


@require_GET
def order_status(request: HttpRequest, pk: int) -> JsonResponse:
    order = get_object_or_404(Order, pk=pk)
    return JsonResponse({"order": order.pk, "status": order.status})


@csrf_exempt
@require_POST
async def remind(request: HttpRequest, pk: int) -> JsonResponse:
    """An async view: `ainsert` runs the insert where Django's connection lives."""
    order = await aget_object_or_404(Order, pk=pk)
    job = await ainsert(send_reminder.new({"order_id": order.pk}, schedule_in=3600))
    return JsonResponse({"order": order.pk, "job": job.id}, status=202)


def _reserve_stock(order: Order) -> None:
    if order.quantity > STOCK:
        raise OutOfStockError(f"only {STOCK} of {order.item!r} in stock")
