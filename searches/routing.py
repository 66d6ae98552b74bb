"""Websocket URL routes (the HTTP ones are in ``searches.urls``)."""

from __future__ import annotations

from django.urls import path

from searches.consumers import RunConsumer

websocket_urlpatterns = [
    path("ws/runs/<int:run_id>/", RunConsumer.as_asgi(), name="ws-run"),
]
