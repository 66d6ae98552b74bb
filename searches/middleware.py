"""Answers 503 (not 500) when the database cannot be reached: the request could not be recorded.

Everything else a request needs from outside degrades instead: live events are best effort and
tasks go through the leases' outbox (searches.services.leases), so a broker that is down never
fails a request that the database could record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30
MESSAGE = "nasweb cannot reach its database right now; nothing was saved. Try again in a minute."


class ServiceUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.error("database unavailable for %s %s: %s", request.method, request.path, exception)
        if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            response: HttpResponse = JsonResponse({"detail": MESSAGE}, status=503)
        else:
            page = (
                "<!doctype html><html lang=en><meta charset=utf-8><title>Service unavailable · nasweb</title>"
                f"<h1>Service unavailable</h1><p>{MESSAGE}</p></html>"
            )
            response = HttpResponse(page, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
