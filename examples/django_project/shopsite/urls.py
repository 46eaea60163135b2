"""URLs of the example shop."""

from __future__ import annotations

from django.urls import path
from orders import views

urlpatterns = [
    path("orders/", views.place_order, name="place-order"),
    path("orders/<int:pk>/", views.order_status, name="order-status"),
    path("orders/<int:pk>/remind/", views.remind, name="remind"),
]
