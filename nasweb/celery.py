"""The Celery application: configured from Django settings (the CELERY_* names)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nasweb.settings")

app = Celery("nasweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Finds `tasks` modules of the installed apps (searches.tasks) once Django is set up.
app.autodiscover_tasks()
