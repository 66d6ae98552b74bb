"""URLs of the web UI (the API lives under searches/api/urls.py)."""

from __future__ import annotations

from django.urls import include, path

from searches.views import (
    accounts,
    candidates,
    compare,
    datasets,
    deployment,
    home,
    notes,
    profiles,
    projects,
    pruning,
    runs,
)

urlpatterns = [
    path("", home.index, name="index"),
    path("favicon.ico", home.favicon, name="favicon"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("accounts/token/", accounts.api_token, name="api_token"),
    # Hardware profiles
    path("profiles/", profiles.profile_list, name="profile_list"),
    path("profiles/new/", profiles.profile_create, name="profile_create"),
    path("profiles/<int:pk>/edit/", profiles.profile_edit, name="profile_edit"),
    path("profiles/<int:pk>/delete/", profiles.profile_delete, name="profile_delete"),
    path("profiles/<int:pk>/copy/", profiles.profile_copy, name="profile_copy"),
    # Projects
    path("projects/", projects.project_list, name="project_list"),
    path("projects/new/", projects.project_create, name="project_create"),
    path("projects/<int:pk>/", projects.project_detail, name="project_detail"),
    path("projects/<int:pk>/edit/", projects.project_edit, name="project_edit"),
    path("projects/<int:pk>/delete/", projects.project_delete, name="project_delete"),
    path("projects/<int:project_pk>/runs/new/", runs.run_create, name="run_create"),
    # Runs
    path("runs/", runs.run_list, name="run_list"),
    path("runs/compare/", compare.run_compare, name="run_compare"),
    path("runs/<int:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<int:pk>/cancel/", runs.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/extend/", runs.run_extend, name="run_extend"),
    path("runs/<int:pk>/candidates.csv", runs.run_csv, name="run_csv"),
    path("runs/<int:pk>/delete/", runs.run_delete, name="run_delete"),
    path("runs/<int:pk>/notes/", notes.run_notes, name="run_notes"),
    # Candidates
    path("candidates/<int:pk>/", candidates.candidate_detail, name="candidate_detail"),
    path("candidates/<int:pk>/notes/", notes.candidate_notes, name="candidate_notes"),
    path(
        "candidates/<int:pk>/architecture.json",
        candidates.candidate_architecture,
        name="candidate_architecture",
    ),
    path("candidates/<int:pk>/header.h", candidates.candidate_header, name="candidate_header"),
    path("candidates/<int:pk>/bundle.zip", candidates.candidate_bundle, name="candidate_bundle"),
    path("candidates/<int:pk>/model.onnx", candidates.candidate_onnx, name="candidate_onnx"),
    path("candidates/<int:pk>/model.tflite", candidates.candidate_tflite, name="candidate_tflite"),
    path("candidates/<int:pk>/verify/", candidates.candidate_verify, name="candidate_verify"),
    path("candidates/<int:pk>/export/", candidates.candidate_export, name="candidate_export"),
    path("candidates/<int:pk>/prune/", pruning.candidate_prune, name="candidate_prune"),
    # Pruning jobs
    path("pruning/<int:pk>/", pruning.pruning_detail, name="pruning_detail"),
    path("pruning/<int:pk>/cancel/", pruning.pruning_cancel, name="pruning_cancel"),
    # Training for deployment
    path("candidates/<int:pk>/deploy/", deployment.candidate_deploy, name="candidate_deploy"),
    path("deployment/<int:pk>/", deployment.deployment_detail, name="deployment_detail"),
    path("deployment/<int:pk>/cancel/", deployment.deployment_cancel, name="deployment_cancel"),
    # Datasets
    path("datasets/", datasets.dataset_list, name="dataset_list"),
    path("datasets/upload/", datasets.dataset_upload, name="dataset_upload"),
    path("datasets/<int:pk>/delete/", datasets.dataset_delete, name="dataset_delete"),
    # REST API
    path("api/", include("searches.api.urls")),
]
