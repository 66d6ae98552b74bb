"""API representations; validation mirrors the web forms (searches/forms.py)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from searches import forms as limits
from searches.engine.strategies.config import (
    ASHA_MAX_ETA,
    ASHA_MAX_RUNG,
    ERROR_OBJECTIVES,
    FIDELITY_SCHEDULES,
    SearchConfig,
)
from searches.engine.strategies.options import MemNASConfig
from searches.models import Candidate, Dataset, HardwareProfile, Project, SearchRun
from searches.services import notes, reports


def _owner(serializer: serializers.Serializer) -> Any:
    return serializer.context["request"].user


def _check_max(value: float | None, maximum: float, unit: str) -> float | None:
    if value is not None and value > maximum:
        raise serializers.ValidationError(f"Must be at most {maximum:,g} {unit}.")
    if value is not None and value <= 0:
        raise serializers.ValidationError("Must be a positive number.")
    return value


class HardwareProfileSerializer(serializers.ModelSerializer):
    class Meta:
        model = HardwareProfile
        fields = [
            "id",
            "name",
            "board",
            "mcu",
            "core",
            "clock_mhz",
            "sram_kb",
            "flash_kb",
            "latency_ms",
            "max_macs",
            "notes",
            "is_preset",
            "created",
        ]
        read_only_fields = ["is_preset", "created"]

    def validate_name(self, value: str) -> str:
        value = value.strip()
        clashes = HardwareProfile.objects.owned_by(_owner(self)).filter(name=value)
        if self.instance is not None:
            clashes = clashes.exclude(pk=self.instance.pk)
        if clashes.exists():
            raise serializers.ValidationError("You already have a profile with this name.")
        return value

    def validate_sram_kb(self, value: int) -> int:
        return int(_check_max(value, limits.MAX_SRAM_KB, "KB") or 0)

    def validate_flash_kb(self, value: int) -> int:
        return int(_check_max(value, limits.MAX_FLASH_KB, "KB") or 0)

    def validate_latency_ms(self, value: float | None) -> float | None:
        return _check_max(value, limits.MAX_LATENCY_MS, "ms")

    def validate_clock_mhz(self, value: float) -> float:
        return float(_check_max(value, limits.MAX_CLOCK_MHZ, "MHz") or 0)


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "description", "created"]
        read_only_fields = ["created"]

    def validate_name(self, value: str) -> str:
        value = value.strip()
        clashes = Project.objects.for_user(_owner(self)).filter(name=value)
        if self.instance is not None:
            clashes = clashes.exclude(pk=self.instance.pk)
        if clashes.exists():
            raise serializers.ValidationError("You already have a project with this name.")
        return value


class DatasetSerializer(serializers.ModelSerializer):
    key = serializers.CharField(read_only=True, help_text="How a run names this dataset.")

    class Meta:
        model = Dataset
        fields = ["id", "key", "name", "kind", "input_shape", "classes", "n_train", "n_test", "created"]
        read_only_fields = fields


class SearchRunSerializer(serializers.ModelSerializer):
    dataset_name = serializers.CharField(read_only=True, help_text="The dataset's name (dataset is its key).")

    class Meta:
        model = SearchRun
        fields = [
            "id",
            "name",
            "project",
            "profile",
            "dataset",
            "dataset_name",
            "strategy",
            "status",
            "budget",
            "evaluated",
            "error",
            "notes",
            "config",
            "created",
            "started",
            "finished",
        ]
        read_only_fields = fields


class NotesSerializer(serializers.Serializer):
    """What PUT and PATCH change on a run or a candidate: its notes, and nothing else."""

    notes = serializers.CharField(
        max_length=notes.MAX_LENGTH,
        allow_blank=True,
        help_text=f"Free text (at most {notes.MAX_LENGTH} characters), shown in the lists and the CSV.",
    )

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "keys"):
            others = sorted(set(data.keys()) - {"notes"})
            if others:
                message = "Cannot be changed through the API: only notes can."
                raise serializers.ValidationError({name: [message] for name in others})
        return super().to_internal_value(data)


class _OwnedPrimaryKey(serializers.PrimaryKeyRelatedField):
    """A primary key looked up among the requesting user's objects only."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        # The unfiltered queryset only tells the schema generator the model; lookups use the user's.
        super().__init__(queryset=model.objects.all(), **kwargs)

    def get_queryset(self) -> Any:
        return self.queryset.model.objects.for_user(self.context["request"].user)


MEMNAS_FIELDS = (
    "memnas_lambda",
    "memnas_beta",
    "memnas_top_k",
    "memnas_seed_backbone",
    "memnas_round0_size",
    "memnas_ranker",
    "memnas_memory_scale",
    "memnas_on_stall",
)


class RunCreateSerializer(serializers.Serializer):
    """A new run; blank numbers take the dataset's defaults, as in the web form."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    project = _OwnedPrimaryKey(Project, required=False, allow_null=True, default=None)
    profile = _OwnedPrimaryKey(HardwareProfile, help_text="One of your profiles or a board preset.")
    dataset = serializers.CharField(help_text="A dataset key: digits, fashion-mnist or upload:<id>.")
    strategy = serializers.ChoiceField(choices=SearchRun.Strategy.choices, default="aging_evolution")
    budget = serializers.IntegerField(min_value=1, max_value=limits.MAX_BUDGET, default=20)
    population = serializers.IntegerField(min_value=2, max_value=limits.MAX_POPULATION, default=8)
    sample_size = serializers.IntegerField(
        min_value=1, max_value=limits.MAX_POPULATION, required=False, allow_null=True, default=None
    )
    epochs = serializers.IntegerField(
        min_value=1, max_value=limits.MAX_EPOCHS, required=False, allow_null=True, default=None
    )
    train_subset = serializers.IntegerField(
        min_value=limits.MIN_TRAIN_SUBSET,
        max_value=limits.MAX_TRAIN_SUBSET,
        required=False,
        allow_null=True,
        default=None,
    )
    parallel = serializers.IntegerField(
        min_value=1,
        max_value=limits.MAX_PARALLEL,
        required=False,
        allow_null=True,
        default=None,
        help_text="Evaluations in flight at once; default: the server's setting.",
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    sram_kb = serializers.FloatField(required=False, allow_null=True, default=None)
    flash_kb = serializers.FloatField(required=False, allow_null=True, default=None)
    latency_ms = serializers.FloatField(required=False, allow_null=True, default=None)
    max_macs = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text="Multiply-accumulates per inference; over-limit candidates are rejected before training.",
    )
    deploy_top_k = serializers.IntegerField(
        min_value=0,
        max_value=10,
        default=3,
        help_text="When the search ends, train its top K Pareto candidates for deployment; 0: off.",
    )
    memnas_lambda = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text=f"MemNAS only: weight of accuracy against memory (default {MemNASConfig.lam}).",
    )
    memnas_beta = serializers.FloatField(
        min_value=0,
        max_value=1,
        required=False,
        allow_null=True,
        default=None,
        help_text=f"MemNAS only: weight of peak SRAM against flash (default {MemNASConfig.beta}).",
    )
    memnas_top_k = serializers.IntegerField(
        min_value=1,
        max_value=limits.MAX_MEMNAS_TOP_K,
        required=False,
        allow_null=True,
        default=None,
        help_text=f"MemNAS only: children trained per round (default {MemNASConfig.top_k}).",
    )
    memnas_seed_backbone = serializers.ChoiceField(
        choices=limits.MEMNAS_SEED_CHOICES,
        required=False,
        allow_null=True,
        default=None,
        help_text="MemNAS only: the first backbone, minimal, random or single_blocks (a round 0 of "
        f"one-block networks); default {MemNASConfig.seed_backbone}.",
    )
    memnas_round0_size = serializers.IntegerField(
        min_value=1,
        max_value=limits.MAX_MEMNAS_ROUND0_SIZE,
        required=False,
        allow_null=True,
        default=None,
        help_text="MemNAS only: networks trained in round 0, with memnas_seed_backbone single_blocks "
        f"(default {MemNASConfig.round0_size}).",
    )
    memnas_ranker = serializers.ChoiceField(
        choices=limits.MEMNAS_RANKER_CHOICES,
        required=False,
        allow_null=True,
        default=None,
        help_text=f"MemNAS only: ranking model, candidate or list (default {MemNASConfig.ranker}).",
    )
    memnas_memory_scale = serializers.ChoiceField(
        choices=limits.MEMNAS_MEMORY_SCALE_CHOICES,
        required=False,
        allow_null=True,
        default=None,
        help_text="MemNAS only: what the score divides memory changes by, backbone (the paper) or "
        f"budget (the SRAM and flash limits) (default {MemNASConfig.memory_scale}).",
    )
    memnas_on_stall = serializers.ChoiceField(
        choices=limits.MEMNAS_ON_STALL_CHOICES,
        required=False,
        allow_null=True,
        default=None,
        help_text="MemNAS only: at a local optimum of the score, best_child (move to the best child) or "
        f"raise_lambda (weigh accuracy more and grow on) (default {MemNASConfig.on_stall}).",
    )
    fidelity_schedule = serializers.ChoiceField(
        choices=FIDELITY_SCHEDULES,
        default=SearchConfig.fidelity_schedule,
        help_text="off: every candidate trained once; asha: successive-halving rungs, the top 1/eta "
        "of each rung trained eta times longer from its weights.",
    )
    asha_eta = serializers.IntegerField(
        min_value=2,
        max_value=ASHA_MAX_ETA,
        default=SearchConfig.asha_eta,
        help_text=f"ASHA: reduction factor (default {SearchConfig.asha_eta}).",
    )
    asha_max_rung = serializers.IntegerField(
        min_value=1,
        max_value=ASHA_MAX_RUNG,
        default=SearchConfig.asha_max_rung,
        help_text="ASHA: highest rung; rung k trains eta**k times the epochs "
        f"(default {SearchConfig.asha_max_rung}).",
    )
    error_objective = serializers.ChoiceField(
        choices=ERROR_OBJECTIVES,
        default=SearchConfig.error_objective,
        help_text="Validation error the search minimises: the float model's or its int8 model's.",
    )

    def validate_dataset(self, value: str) -> Dataset:
        for dataset in Dataset.objects.for_user(_owner(self)):
            if dataset.key == value:
                return dataset
        raise serializers.ValidationError(f"Unknown dataset {value!r}.")

    def validate_sram_kb(self, value: float | None) -> float | None:
        return _check_max(value, limits.MAX_SRAM_KB, "KB")

    def validate_flash_kb(self, value: float | None) -> float | None:
        return _check_max(value, limits.MAX_FLASH_KB, "KB")

    def validate_latency_ms(self, value: float | None) -> float | None:
        return _check_max(value, limits.MAX_LATENCY_MS, "ms")

    sparsity = serializers.ListField(
        child=serializers.FloatField(min_value=0, max_value=0.95),
        min_length=2,
        max_length=2,
        required=False,
        allow_null=True,
        default=None,
        help_text="Structured pruning (μNAS): [low, high] range of each candidate's DPF sparsity gene.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("strategy") != SearchRun.Strategy.MEMNAS:
            given = [name for name in MEMNAS_FIELDS if attrs.get(name) is not None]
            if given:
                raise serializers.ValidationError(dict.fromkeys(given, "Only MemNAS runs take this setting."))
        elif (
            attrs.get("memnas_round0_size") is not None
            and attrs.get("memnas_seed_backbone") != "single_blocks"
        ):
            raise serializers.ValidationError(
                {"memnas_round0_size": 'Round 0 only runs with memnas_seed_backbone "single_blocks".'}
            )
        sparsity = attrs.get("sparsity")
        if sparsity is not None:
            if attrs.get("strategy") == SearchRun.Strategy.MEMNAS:
                raise serializers.ValidationError({"sparsity": "MemNAS runs do not take a sparsity gene."})
            if sparsity[0] > sparsity[1]:
                raise serializers.ValidationError({"sparsity": "Give [low, high] with low <= high."})
            attrs["sparsity"] = (sparsity[0], sparsity[1])
        if attrs.get("sample_size") and attrs["sample_size"] > attrs["population"]:
            raise serializers.ValidationError(
                {"sample_size": "The sample size cannot exceed the population."}
            )
        return attrs


class ExtendSerializer(serializers.Serializer):
    extra_budget = serializers.IntegerField(min_value=1, max_value=limits.MAX_EXTEND)


# What the API shows of a job on a candidate (models.CandidateJob): pruning and deployment training.
CANDIDATE_JOB_FIELDS = [
    "id",
    "source",
    "config",
    "status",
    "progress",
    "result",
    "error",
    "result_candidate",
    "created",
    "started",
    "finished",
]

CANDIDATE_FIELDS = [
    "id",
    "index",
    "label",
    "status",
    "parent",
    "parent_index",
    "mutation",
    "feasible",
    "on_pareto",
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
    "rung",
    "rung_results",
    "reject_reason",
    "notes",
    "export_status",
    "created",
]


class CandidateSerializer(serializers.ModelSerializer):
    parent_index = serializers.IntegerField(source="parent.index", read_only=True, allow_null=True)
    label = serializers.CharField(
        read_only=True, help_text='How pages name it: "#7" (the strategy\'s index), "P3" (pruning job 3\'s).'
    )

    class Meta:
        model = Candidate
        fields = CANDIDATE_FIELDS
        read_only_fields = fields


class CandidateDetailSerializer(CandidateSerializer):
    children = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    resources = serializers.SerializerMethodField(
        help_text="Totals, per-layer table and memory timeline computed from the architecture."
    )
    export = serializers.SerializerMethodField(
        help_text="The C name, the target the export is built and verified for, and the last "
        "verification: status (none, queued, running, passed, failed, unavailable) and report."
    )

    class Meta(CandidateSerializer.Meta):
        fields = [*CANDIDATE_FIELDS, "run", "architecture", "children", "resources", "export"]
        read_only_fields = fields

    def get_resources(self, candidate: Candidate) -> dict[str, Any]:
        return reports.resources_json(reports.analyze_candidate(candidate))

    def get_export(self, candidate: Candidate) -> dict[str, Any]:
        return reports.export_json(candidate)
