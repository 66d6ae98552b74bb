"""API routes, the OpenAPI schema and its documentation pages (assets served locally)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from searches.api import compare, deployment, pruning, views

router = DefaultRouter()
router.register("profiles", views.HardwareProfileViewSet, basename="api-profile")
router.register("projects", views.ProjectViewSet, basename="api-project")
router.register("datasets", views.DatasetViewSet, basename="api-dataset")
router.register("runs", views.SearchRunViewSet, basename="api-run")
# Detail routes only (api-candidate-detail, -header, -bundle, -onnx, -verify): list a run's
# candidates under runs/<id>/candidates/.
router.register("candidates", views.CandidateViewSet, basename="api-candidate")
router.register("pruning-jobs", pruning.PruningJobViewSet, basename="api-pruning-job")
router.register("deployment-jobs", deployment.DeploymentJobViewSet, basename="api-deployment-job")

urlpatterns = [
    # Before the router: "compare" is not a run id.
    path("runs/compare/", compare.run_compare, name="api-run-compare"),
    path("", include(router.urls)),
    path("runs/<int:run_pk>/candidates/", views.RunCandidateList.as_view(), name="api-run-candidates"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # The documentation pages are for people in a browser: send them to the login page first.
    path(
        "docs/",
        login_required(
            SpectacularSwaggerView.as_view(url_name="api-schema", template_name="searches/api_docs.html")
        ),
        name="api-docs",
    ),
    path("redoc/", login_required(SpectacularRedocView.as_view(url_name="api-schema")), name="api-redoc"),
]
