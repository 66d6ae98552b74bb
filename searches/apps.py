from __future__ import annotations

from django.apps import AppConfig


class SearchesConfig(AppConfig):
    name = "searches"
    verbose_name = "Searches"
    default_auto_field = "django.db.models.BigAutoField"
