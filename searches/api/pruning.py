"""API for pruning jobs: start one on a candidate, read its progress and result (owner only)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from searches.api.serializers import CANDIDATE_JOB_FIELDS
from searches.engine.space.sparsity import MAX_SPARSITY
from searches.models import Candidate, PruningJob
from searches.services import pruning


class PruningJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = PruningJob
        fields = read_only_fields = CANDIDATE_JOB_FIELDS


class PruningRequestSerializer(serializers.Serializer):
    """Either ``target_sparsity`` or ``fit_profile: true``."""

    candidate = serializers.IntegerField()
    target_sparsity = serializers.FloatField(required=False, min_value=0.01, max_value=MAX_SPARSITY)
    fit_profile = serializers.BooleanField(required=False, default=False)
    epochs = serializers.IntegerField(
        required=False, default=pruning.DEFAULT_EPOCHS, min_value=1, max_value=20
    )


class PruningJobViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Pruning jobs on the user's candidates; POST queues a new one (202)."""

    serializer_class = PruningJobSerializer

    def get_queryset(self) -> QuerySet[PruningJob]:
        return PruningJob.objects.for_user(self.request.user).order_by("-created", "-id")

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        req = PruningRequestSerializer(data=request.data)
        req.is_valid(raise_exception=True)
        data = req.validated_data
        candidate = Candidate.objects.for_user(request.user).filter(pk=data["candidate"]).first()
        if candidate is None:
            return Response({"candidate": ["No such candidate."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            job = pruning.start_pruning(
                candidate,
                target_sparsity=data.get("target_sparsity"),
                fit_profile=data["fit_profile"],
                epochs=data["epochs"],
            )
        except pruning.PruningUnavailable as exc:
            return Response({"detail": f"Cannot prune: {exc}."}, status=status.HTTP_400_BAD_REQUEST)
        return Response(PruningJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
