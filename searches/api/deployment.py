"""API for deployment-training jobs: start one on a candidate, follow it, cancel it (owner only)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiTypes, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from searches.api.serializers import CANDIDATE_JOB_FIELDS
from searches.models import Candidate, DeploymentJob
from searches.services import deployment


class DeploymentJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeploymentJob
        fields = read_only_fields = CANDIDATE_JOB_FIELDS


class DeploymentRequestSerializer(serializers.Serializer):
    """A candidate, and optionally the float epochs, augmentation and QAT (defaults per data set)."""

    candidate = serializers.IntegerField()
    epochs = serializers.IntegerField(required=False, min_value=1, max_value=deployment.MAX_EPOCHS)
    augment = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Default: on for known data sets, off for uploads.",
    )
    qat = serializers.BooleanField(required=False, default=True)


class DeploymentJobViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Deployment-training jobs on the user's candidates; POST queues a new one (202)."""

    serializer_class = DeploymentJobSerializer

    def get_queryset(self) -> QuerySet[DeploymentJob]:
        return DeploymentJob.objects.for_user(self.request.user).order_by("-created", "-id")

    @extend_schema(request=DeploymentRequestSerializer, responses={202: DeploymentJobSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        req = DeploymentRequestSerializer(data=request.data)
        req.is_valid(raise_exception=True)
        data = req.validated_data
        candidate = Candidate.objects.for_user(request.user).filter(pk=data["candidate"]).first()
        if candidate is None:
            return Response({"candidate": ["No such candidate."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            recipe = deployment.recipe_for(
                candidate, epochs=data.get("epochs"), augment=data["augment"], qat=data["qat"]
            )
            job = deployment.start_deployment(candidate, recipe)
        except deployment.DeploymentUnavailable as exc:
            return Response(
                {"detail": f"Cannot train for deployment: {exc}."}, status=status.HTTP_400_BAD_REQUEST
            )
        return Response(DeploymentJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={200: DeploymentJobSerializer, 409: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not deployment.cancel_deployment(job):
            return Response({"detail": f"The job is already {job.status}."}, status=status.HTTP_409_CONFLICT)
        return Response(DeploymentJobSerializer(job).data)
