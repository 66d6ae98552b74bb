from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from searches.models import Candidate, Dataset, HardwareProfile, Project, SearchRun


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "created"]
    list_filter = ["owner"]
    search_fields = ["name", "description"]


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "is_preset", "core", "clock_mhz", "sram_kb", "flash_kb", "latency_ms"]
    list_filter = ["is_preset", "core"]
    search_fields = ["name", "board", "mcu"]

    # The board presets ship with nasweb (data migration): readable, never edited or deleted here.
    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_preset:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_preset:
            return False
        return super().has_delete_permission(request, obj)


@admin.register(SearchRun)
class SearchRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "__str__",
        "owner",
        "dataset",
        "strategy",
        "status",
        "evaluated",
        "budget",
        "created",
    ]
    list_filter = ["status", "strategy", "dataset"]
    search_fields = ["name", "dataset"]
    raw_id_fields = ["project", "profile"]
    readonly_fields = ["created", "started", "finished", "task_id"]


@admin.register(Candidate)
class CandidateAdmin(admin.ModelAdmin):
    list_display = [
        "run",
        "index",
        "status",
        "feasible",
        "on_pareto",
        "val_accuracy",
        "int8_val_accuracy",
        "peak_sram_bytes",
        "flash_bytes",
        "macs",
        "export_status",
    ]
    list_filter = ["status", "feasible", "on_pareto", "export_status"]
    raw_id_fields = ["run", "parent"]
    readonly_fields = ["created", "export_requested", "export_finished"]


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "kind", "input_shape", "classes", "n_train", "n_test", "created"]
    list_filter = ["kind"]
    search_fields = ["name"]
    # Rows are made by the validating upload (or the built-in migration), never typed in here.
    readonly_fields = ["kind", "file", "input_shape", "classes", "n_train", "n_test", "created"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.kind == Dataset.Kind.BUILTIN:
            return False
        return super().has_delete_permission(request, obj)
