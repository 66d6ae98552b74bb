"""The landing page and the site icon."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return redirect("project_list")


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on pages without an icon link (JSON, the browsable API)."""
    return redirect(static("img/favicon.svg"), permanent=True)
