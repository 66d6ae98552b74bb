"""nasweb project configuration: settings, URLs, ASGI/WSGI entry points and the Celery app."""

from __future__ import annotations

# Loaded with Django so that @shared_task functions bind to this app.
from nasweb.celery import app as celery_app

__all__ = ["celery_app"]
