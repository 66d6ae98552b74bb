"""API: compare runs (the same data as the comparison page)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from searches.services import compare


@extend_schema(
    parameters=[
        OpenApiParameter("runs", str, description="Run ids, comma-separated or repeated (2 to 8 of yours)."),
        OpenApiParameter("sram_kb", float, required=False, description="SRAM limit; default the strictest."),
        OpenApiParameter("flash_kb", float, required=False, description="Flash limit; default strictest."),
    ],
    responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
    description="Pareto fronts (validation error against peak SRAM) under shared limits, hypervolume "
    "after each trained candidate, the best candidate of each run and the settings that differ.",
)
@api_view(["GET"])
def run_compare(request: Request) -> Response:
    try:
        runs, limits = compare.parse_request(request.user, request.query_params)
    except compare.CompareError as exc:
        return Response({"detail": f"Cannot compare: {exc}."}, status=status.HTTP_400_BAD_REQUEST)
    return Response(compare.compare(runs, limits))
