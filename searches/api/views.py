"""API views.  Every queryset is the requesting user's own rows: another user's ids are 404s."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import models
from django.db.models import F, QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import filters, generics, mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from searches.api import serializers as s
from searches.engine.deploy.header import ExportError
from searches.engine.deploy.int8 import QuantizationError
from searches.engine.deploy.tflite import TFLiteExportError
from searches.models import Candidate, Dataset, HardwareProfile, Project, SearchRun
from searches.services import downloads, execution, export
from searches.services.launch import RunRequest, launch_run
from searches.services.notes import set_notes

# ---- profiles, projects, datasets ------------------------------------------------------------


class HardwareProfileViewSet(viewsets.ModelViewSet):
    """Your hardware profiles, plus the built-in board presets (read-only)."""

    serializer_class = s.HardwareProfileSerializer

    def get_queryset(self) -> QuerySet[HardwareProfile]:
        return HardwareProfile.objects.for_user(self.request.user)

    def perform_create(self, serializer: Any) -> None:
        serializer.save(owner=self.request.user)

    def _check_editable(self, profile: HardwareProfile) -> None:
        if profile.is_preset:
            raise PermissionDenied("Board presets are read-only; copy one into your own profiles.")

    def perform_update(self, serializer: Any) -> None:
        self._check_editable(serializer.instance)
        serializer.save()

    def perform_destroy(self, instance: HardwareProfile) -> None:
        self._check_editable(instance)
        instance.delete()


class ProjectViewSet(viewsets.ModelViewSet):
    serializer_class = s.ProjectSerializer

    def get_queryset(self) -> QuerySet[Project]:
        return Project.objects.for_user(self.request.user)

    def perform_create(self, serializer: Any) -> None:
        serializer.save(owner=self.request.user)


class DatasetViewSet(viewsets.ReadOnlyModelViewSet):
    """The built-in datasets and your uploads (upload them in the web UI)."""

    serializer_class = s.DatasetSerializer

    def get_queryset(self) -> QuerySet[Dataset]:
        return Dataset.objects.for_user(self.request.user)


class NotesUpdateMixin:
    """PUT or PATCH ``{"notes": "..."}``: the one thing the API edits on runs and candidates."""

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        row = self.get_object()  # type: ignore[attr-defined]
        form = s.NotesSerializer(data=request.data, partial=kwargs.get("partial", False))
        form.is_valid(raise_exception=True)
        if "notes" in form.validated_data:
            set_notes(row, form.validated_data["notes"])
        return Response(self.get_serializer(row).data)  # type: ignore[attr-defined]

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, partial=True, **kwargs)


_NOTES_SCHEMA = {
    "update": extend_schema(
        request=s.NotesSerializer, description='Replace the notes: the body is {"notes": "..."}.'
    ),
    "partial_update": extend_schema(
        request=s.NotesSerializer, description='Change the notes: the body is {"notes": "..."}.'
    ),
}


# ---- runs ----------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("project", OpenApiTypes.INT, description="Only this project's runs."),
            OpenApiParameter("status", OpenApiTypes.STR, enum=SearchRun.Status.values),
        ]
    ),
    create=extend_schema(request=s.RunCreateSerializer, responses={201: s.SearchRunSerializer}),
    **_NOTES_SCHEMA,
)
class SearchRunViewSet(
    NotesUpdateMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Search runs: create one (it starts at once), follow it, cancel or extend it, edit its notes."""

    serializer_class = s.SearchRunSerializer

    def get_queryset(self) -> QuerySet[SearchRun]:
        runs = SearchRun.objects.for_user(self.request.user)
        if self.action == "list":
            project, run_status = (
                self.request.query_params.get("project"),
                self.request.query_params.get("status"),
            )
            if project:
                runs = runs.filter(project_id=_parse(_id, project, "project"))
            if run_status:
                runs = runs.filter(status=_parse(_choice(SearchRun.Status), run_status, "status"))
        return runs

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = s.RunCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = dict(form.validated_data)
        project = data.pop("project")
        try:
            run = launch_run(request.user, project, RunRequest(**data))
        except ValueError as exc:
            return Response({"non_field_errors": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(s.SearchRunSerializer(run).data, status=status.HTTP_201_CREATED)

    # Every action takes ``format``: DefaultRouter also routes it with a suffix (``cancel.json/``).
    @extend_schema(request=None, responses={200: s.SearchRunSerializer, 409: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None, format: str | None = None) -> Response:
        run = self.get_object()
        if not run.is_active:
            return Response({"detail": f"The run is already {run.status}."}, status=status.HTTP_409_CONFLICT)
        execution.cancel_run(run)
        run.refresh_from_db()
        return Response(s.SearchRunSerializer(run).data)

    @extend_schema(request=s.ExtendSerializer, responses={200: s.SearchRunSerializer})
    @action(detail=True, methods=["post"])
    def extend(self, request: Request, pk: str | None = None, format: str | None = None) -> Response:
        run = self.get_object()
        form = s.ExtendSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            execution.extend_run(run, form.validated_data["extra_budget"])
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        run.refresh_from_db()
        return Response(s.SearchRunSerializer(run).data)


# ---- candidates --------------------------------------------------------------------------------


class CandidatePagination(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class _BadValue(ValueError):
    """A query parameter's value that a parser refused, with the message to show."""


def _choice(choices: type[models.TextChoices]) -> Callable[[str], str]:
    """A parser that accepts only the values of ``choices`` (anything else, a NUL byte included)."""

    def parse(value: str) -> str:
        if value not in choices.values:
            raise _BadValue(f"Unknown value {value!r}; expected one of: {', '.join(choices.values)}.")
        return value

    parse.choices = choices.values  # type: ignore[attr-defined]
    return parse


def _id(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise _BadValue(f"Invalid value {value!r}; expected an id.")
    return int(value)


# Query parameter -> (lookup, parser) of the candidate list's filters.
CANDIDATE_FILTERS: dict[str, tuple[str, Any]] = {
    "status": ("status", _choice(Candidate.Status)),
    "feasible": ("feasible", lambda v: v.lower() in {"1", "true", "yes"}),
    "on_pareto": ("on_pareto", lambda v: v.lower() in {"1", "true", "yes"}),
    "min_val_accuracy": ("val_accuracy__gte", float),
    "min_int8_val_accuracy": ("int8_val_accuracy__gte", float),
    "export_status": ("export_status", _choice(Candidate.ExportStatus)),
    "max_peak_sram_bytes": ("peak_sram_bytes__lte", int),
    "max_flash_bytes": ("flash_bytes__lte", int),
    "max_macs": ("macs__lte", int),
}

_FILTER_TYPES = {float: OpenApiTypes.FLOAT, int: OpenApiTypes.INT}


class NullsLastOrderingFilter(filters.OrderingFilter):
    """Missing metrics (pending or rejected candidates) sort last on every database.

    PostgreSQL puts NULL first when descending and SQLite last; the same request must give the
    same order on both.
    """

    def filter_queryset(self, request: Request, queryset: QuerySet, view: Any) -> QuerySet:
        ordering = self.get_ordering(request, queryset, view)
        if not ordering:
            return queryset
        terms = [
            F(f[1:]).desc(nulls_last=True) if f.startswith("-") else F(f).asc(nulls_last=True)
            for f in ordering
        ]
        return queryset.order_by(*terms, "index")


@extend_schema(
    parameters=[
        OpenApiParameter(
            name,
            OpenApiTypes.STR if hasattr(parse, "choices") else _FILTER_TYPES.get(parse, OpenApiTypes.BOOL),
            enum=getattr(parse, "choices", None),
            description=f"filter: {lookup}",
        )
        for name, (lookup, parse) in CANDIDATE_FILTERS.items()
    ]
)
class RunCandidateList(generics.ListAPIView):
    """The candidates of one of your runs, filtered and ordered (``?ordering=-val_accuracy``)."""

    serializer_class = s.CandidateSerializer
    pagination_class = CandidatePagination
    filter_backends = [NullsLastOrderingFilter]
    ordering_fields = [
        "index",
        "val_accuracy",
        "test_accuracy",
        "int8_val_accuracy",
        "int8_test_accuracy",
        "peak_sram_bytes",
        "flash_bytes",
        "macs",
        "latency_ms",
        "params",
        "train_seconds",
    ]
    ordering = ["index"]

    def get_queryset(self) -> QuerySet[Candidate]:
        run = generics.get_object_or_404(
            SearchRun.objects.for_user(self.request.user), pk=self.kwargs["run_pk"]
        )
        rows = Candidate.objects.for_user(self.request.user).filter(run=run).select_related("parent")
        for name, (lookup, parse) in CANDIDATE_FILTERS.items():
            value = self.request.query_params.get(name)
            if value not in (None, ""):
                rows = rows.filter(**{lookup: _parse(parse, value, name)})
        return rows


def _parse(parse: Any, value: str, name: str) -> Any:
    """``parse(value)``, or a 400 naming the parameter (never a database error: PostgreSQL
    refuses NUL bytes in text, so an unchecked ``?status=%00`` was a 500)."""
    try:
        return parse(value)
    except _BadValue as exc:
        raise ValidationError({name: [str(exc)]}) from None
    except ValueError:
        raise ValidationError({name: [f"Invalid value {value!r}."]}) from None


class DownloadRenderer(renderers.BaseRenderer):
    """Lets a download answer whatever its client accepts; the view makes the bytes itself.

    Errors on that path (``{"detail": ...}``) are rendered as JSON.
    """

    media_type = "*/*"
    format = "download"
    charset = None
    render_style = "binary"

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        if isinstance(data, bytes):
            return data
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return json.dumps(data).encode()


_DOWNLOAD_RENDERERS = [renderers.JSONRenderer, DownloadRenderer]


def _refuse_suffix(format: str | None) -> None:
    """A download is its file, never JSON: ``header.json/`` is a 404 that says so, not a C header."""
    if format is not None:
        raise NotFound(f"Downloads take no format suffix: drop the '.{format}'.")


@extend_schema_view(**_NOTES_SCHEMA)
class CandidateViewSet(NotesUpdateMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """One candidate with its architecture and resources, its notes; its exports and their verification."""

    serializer_class = s.CandidateDetailSerializer

    def get_queryset(self) -> QuerySet[Candidate]:
        return Candidate.objects.for_user(self.request.user).select_related("parent", "run", "run__profile")

    def _export(self, format_name: str) -> HttpResponse | Response:
        candidate = self.get_object()
        try:
            return downloads.file_response(candidate, format_name)
        except export.ExportUnavailable as exc:
            return Response({"detail": f"Cannot export: {exc}."}, status=status.HTTP_409_CONFLICT)
        except (QuantizationError, ExportError, TFLiteExportError) as exc:
            return Response({"detail": f"The export failed: {exc}"}, status=status.HTTP_409_CONFLICT)

    @extend_schema(
        responses={(200, "text/x-c"): OpenApiTypes.STR, 409: OpenApiTypes.OBJECT},
        description="The int8 C99 header, nasweb_r<run>_c<index>.h (needs a trained candidate).",
    )
    @action(detail=True, methods=["get"], renderer_classes=_DOWNLOAD_RENDERERS)
    def header(
        self, request: Request, pk: str | None = None, format: str | None = None
    ) -> HttpResponse | Response:
        _refuse_suffix(format)
        return self._export("header")

    @extend_schema(
        responses={(200, "application/zip"): OpenApiTypes.BINARY, 409: OpenApiTypes.OBJECT},
        description="The header with an example main.c, a Makefile and a README, for the run's target.",
    )
    @action(detail=True, methods=["get"], renderer_classes=_DOWNLOAD_RENDERERS)
    def bundle(
        self, request: Request, pk: str | None = None, format: str | None = None
    ) -> HttpResponse | Response:
        _refuse_suffix(format)
        return self._export("bundle")

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 409: OpenApiTypes.OBJECT},
        description=(
            "The int8 model as a full-integer .tflite file (int8 NHWC input, int8 logits): the header's "
            "scales, zero points, weights and biases, for LiteRT and TFLite Micro."
        ),
    )
    @action(detail=True, methods=["get"], renderer_classes=_DOWNLOAD_RENDERERS)
    def tflite(
        self, request: Request, pk: str | None = None, format: str | None = None
    ) -> HttpResponse | Response:
        _refuse_suffix(format)
        return self._export("tflite")

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 409: OpenApiTypes.OBJECT},
        description="The trained float model in ONNX: input NCHW float32 in [0, 1], output logits.",
    )
    @action(detail=True, methods=["get"], renderer_classes=_DOWNLOAD_RENDERERS)
    def onnx(
        self, request: Request, pk: str | None = None, format: str | None = None
    ) -> HttpResponse | Response:
        _refuse_suffix(format)
        return self._export("onnx")

    @extend_schema(request=None, responses={202: s.CandidateDetailSerializer, 409: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str | None = None, format: str | None = None) -> Response:
        """Queue the export verification; follow ``export.status`` until passed, failed or unavailable."""
        candidate = self.get_object()
        try:
            queued = export.request_verification(candidate)
        except export.ExportUnavailable as exc:
            return Response({"detail": f"Cannot verify: {exc}."}, status=status.HTTP_409_CONFLICT)
        if not queued:
            return Response(
                {"detail": "A verification of this candidate is already under way."},
                status=status.HTTP_409_CONFLICT,
            )
        candidate.refresh_from_db()
        return Response(s.CandidateDetailSerializer(candidate).data, status=status.HTTP_202_ACCEPTED)
