"""Forms of the web UI: hardware profiles, projects, new runs, run extension and dataset uploads."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm
from django.core.validators import MaxValueValidator, MinValueValidator

from searches.engine.strategies.config import ASHA_MAX_ETA, ASHA_MAX_RUNG, SearchConfig
from searches.engine.strategies.options import MemNASConfig
from searches.engine.training.datasets import fashion_mnist_available
from searches.models import Dataset, HardwareProfile, Project, SearchRun
from searches.services.datasets import IDX_FIELDS
from searches.services.launch import default_parallel
from searches.services.notes import MAX_LENGTH as NOTES_MAX_LENGTH

# Sane maxima: the largest MCUs have a few MB of SRAM and 16 MB of flash; anything far beyond
# is a typo (bytes entered as KB) rather than a target.
MAX_SRAM_KB = 64 * 1024
MAX_FLASH_KB = 256 * 1024
MAX_LATENCY_MS = 60_000.0
MAX_MACS = 10**12
MAX_DEPLOY_TOP_K = 10
DEFAULT_DEPLOY_TOP_K = 3
MAX_CLOCK_MHZ = 2_000.0
MAX_BUDGET = 5_000
MAX_POPULATION = 500
MAX_EPOCHS = 500
# Train subsets: the form and the API (searches.api.serializers) check the same range.  The
# maximum is far beyond any data set nasweb can hold in memory (Fashion-MNIST has 60,000).
MIN_TRAIN_SUBSET = 10
MAX_TRAIN_SUBSET = 10_000_000
MAX_PARALLEL = 16
MAX_EXTEND = 5_000
MAX_MEMNAS_TOP_K = 16
# Round 0 trains at most this many single-block networks (the space has 50 op pairs x widths).
MAX_MEMNAS_ROUND0_SIZE = 32
# MemNAS's round-0 kinds and ranking models, as the form and the API offer them.
MEMNAS_SEED_CHOICES = [
    ("minimal", "One minimal network (a 3x3 conv, 8 filters)"),
    ("random", "One random network within the limits"),
    ("single_blocks", "Round 0: several single-block networks, grow the best"),
]
MEMNAS_RANKER_CHOICES = [
    ("candidate", "Per candidate (a GRU scores each child alone)"),
    ("list", "List (a second GRU reads a round's children together)"),
]
MEMNAS_MEMORY_SCALE_CHOICES = [
    ("backbone", "Backbone (the paper: a change relative to the backbone's memory)"),
    ("budget", "Board budget (a change relative to the SRAM and flash limits)"),
]
MEMNAS_ON_STALL_CHOICES = [
    ("best_child", "Move to the best child anyway"),
    ("raise_lambda", "Raise λ halfway to 1 and grow on (traces the front)"),
]


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)


# ---- hardware profiles -------------------------------------------------------------------


def _positive(maximum: float, unit: str) -> list[Any]:
    return [
        MinValueValidator(0.001, message="Must be a positive number."),
        MaxValueValidator(maximum, message=f"Must be at most {maximum:,g} {unit}."),
    ]


class HardwareProfileForm(forms.ModelForm):
    """Edge Impulse's target form: name, RAM, ROM, latency budget, processor and clock."""

    sram_kb = forms.IntegerField(
        label="SRAM (KB)",
        validators=_positive(MAX_SRAM_KB, "KB"),
        help_text="RAM the model may use for activations; leave room for firmware and stacks.",
    )
    flash_kb = forms.IntegerField(
        label="Flash (KB)",
        validators=_positive(MAX_FLASH_KB, "KB"),
        help_text="ROM the model's weights may take.",
    )
    latency_ms = forms.FloatField(
        label="Latency budget (ms)",
        required=False,
        validators=_positive(MAX_LATENCY_MS, "ms"),
        help_text="Optional. Checked against an estimate from MACs, core and clock.",
    )
    max_macs = forms.IntegerField(
        label="MACs limit",
        required=False,
        min_value=1,
        max_value=MAX_MACS,
        help_text="Optional. Multiply-accumulates per inference (μNAS bounds Fashion-MNIST at 30,000,000).",
    )
    clock_mhz = forms.FloatField(label="Clock (MHz)", validators=_positive(MAX_CLOCK_MHZ, "MHz"))

    class Meta:
        model = HardwareProfile
        fields = ["name", "sram_kb", "flash_kb", "latency_ms", "max_macs", "core", "clock_mhz", "notes"]
        labels = {"core": "Core"}

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        clashes = HardwareProfile.objects.owned_by(self.owner).filter(name=name)
        if clashes.exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("You already have a profile with this name.")
        return name

    def save(self, commit: bool = True) -> HardwareProfile:
        self.instance.owner = self.owner
        return super().save(commit)


# ---- projects ----------------------------------------------------------------------------


class ProjectForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        clashes = Project.objects.for_user(self.owner).filter(name=name)
        if clashes.exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError("You already have a project with this name.")
        return name

    def save(self, commit: bool = True) -> Project:
        self.instance.owner = self.owner
        return super().save(commit)


# ---- new run -----------------------------------------------------------------------------


def _count(label: str, lo: int, hi: int, **kwargs: Any) -> forms.IntegerField:
    return forms.IntegerField(label=label, min_value=lo, max_value=hi, **kwargs)


class NewRunForm(forms.Form):
    """Everything ``services.runs.make_config`` needs; blank numbers take the dataset's defaults."""

    name = forms.CharField(max_length=200, required=False, help_text="Optional.")
    profile = forms.TypedChoiceField(label="Hardware profile", coerce=int)
    dataset = forms.TypedChoiceField(coerce=int)
    strategy = forms.ChoiceField(
        choices=SearchRun.Strategy.choices, initial=SearchRun.Strategy.AGING_EVOLUTION
    )
    budget = _count("Budget (candidates to train)", 1, MAX_BUDGET, initial=20)
    population = _count("Population", 2, MAX_POPULATION, initial=8)
    sample_size = _count(
        "Sample size", 1, MAX_POPULATION, required=False, help_text="Tournament size; blank: population / 4."
    )
    epochs = _count("Epochs per candidate", 1, MAX_EPOCHS, required=False)
    train_subset = _count(
        "Train subset",
        MIN_TRAIN_SUBSET,
        MAX_TRAIN_SUBSET,
        required=False,
        help_text="Train on at most this many images.",
    )
    parallel = _count(
        "Parallel evaluations",
        1,
        MAX_PARALLEL,
        help_text="Candidates trained at the same time (one per worker).",
    )
    seed = _count("Seed", 0, 2**31 - 1, initial=0)
    sram_kb = forms.FloatField(
        label="SRAM override (KB)", required=False, validators=_positive(MAX_SRAM_KB, "KB")
    )
    flash_kb = forms.FloatField(
        label="Flash override (KB)", required=False, validators=_positive(MAX_FLASH_KB, "KB")
    )
    latency_ms = forms.FloatField(
        label="Latency override (ms)", required=False, validators=_positive(MAX_LATENCY_MS, "ms")
    )
    max_macs = forms.IntegerField(
        label="MACs limit override", required=False, min_value=1, max_value=MAX_MACS
    )
    deploy_top_k = forms.IntegerField(
        label="Train the top K for deployment",
        min_value=0,
        max_value=MAX_DEPLOY_TOP_K,
        initial=DEFAULT_DEPLOY_TOP_K,
        required=False,
        help_text="When the search ends, train its top K Pareto candidates for deployment "
        "(longer, augmented, quantisation-aware); 0 turns it off, blank takes 3.",
    )
    memnas_lambda = forms.FloatField(
        label="MemNAS λ",
        min_value=0,
        max_value=1,
        initial=MemNASConfig.lam,
        required=False,
        help_text="Weight of accuracy against memory in the efficiency score (1: accuracy only).",
    )
    memnas_beta = forms.FloatField(
        label="MemNAS β",
        min_value=0,
        max_value=1,
        initial=MemNASConfig.beta,
        required=False,
        help_text="Weight of peak SRAM against flash in the memory part of the score.",
    )
    memnas_top_k = _count(
        "MemNAS top-k",
        1,
        MAX_MEMNAS_TOP_K,
        initial=MemNASConfig.top_k,
        required=False,
        help_text="Children of each backbone trained per round, picked by the ranking model; "
        "the best of them by the score becomes the next backbone.",
    )
    memnas_seed_backbone = forms.ChoiceField(
        label="MemNAS start",
        choices=MEMNAS_SEED_CHOICES,
        initial=MemNASConfig.seed_backbone,
        required=False,
        help_text="The first backbone: one small seed, or a round 0 that trains several one-block "
        "networks and grows from the best by the score.",
    )
    memnas_round0_size = _count(
        "MemNAS round 0 size",
        1,
        MAX_MEMNAS_ROUND0_SIZE,
        initial=MemNASConfig.round0_size,
        required=False,
        help_text="Networks trained in round 0 (the minimal one included); only with round 0.",
    )
    memnas_ranker = forms.ChoiceField(
        label="MemNAS ranking model",
        choices=MEMNAS_RANKER_CHOICES,
        initial=MemNASConfig.ranker,
        required=False,
        help_text="How the children of a round are ranked before the top-k are trained.",
    )
    memnas_memory_scale = forms.ChoiceField(
        label="MemNAS memory scale",
        choices=MEMNAS_MEMORY_SCALE_CHOICES,
        initial=MemNASConfig.memory_scale,
        required=False,
        help_text="What the score divides a memory change by. Relative to a tiny backbone every "
        "growth looks expensive; relative to the SRAM and flash limits it costs its share of the board.",
    )
    memnas_on_stall = forms.ChoiceField(
        label="MemNAS at a local optimum",
        choices=MEMNAS_ON_STALL_CHOICES,
        initial=MemNASConfig.on_stall,
        required=False,
        help_text="When no child has scored better than the backbone for two rounds: move to the "
        "best child, or weigh accuracy more and grow on toward more accurate models of the front.",
    )
    fidelity_schedule = forms.ChoiceField(
        label="Fidelity schedule",
        choices=[("off", "Single fidelity"), ("asha", "ASHA rungs (multi-fidelity)")],
        initial=SearchConfig.fidelity_schedule,
        required=False,
        help_text="ASHA trains every candidate at the epochs above first, then continues the best "
        "1/η of each rung η times longer from their weights.",
    )
    asha_eta = _count(
        "ASHA η",
        2,
        ASHA_MAX_ETA,
        initial=SearchConfig.asha_eta,
        required=False,
        help_text=f"Blank: {SearchConfig.asha_eta}.",
    )
    asha_max_rung = _count(
        "ASHA max rung",
        1,
        ASHA_MAX_RUNG,
        initial=SearchConfig.asha_max_rung,
        required=False,
        help_text=f"Blank: {SearchConfig.asha_max_rung} (rung k trains η^k times the epochs).",
    )
    error_objective = forms.ChoiceField(
        label="Error objective",
        choices=[("float", "Float validation error"), ("int8", "int8 validation error")],
        initial=SearchConfig.error_objective,
        required=False,
        help_text="int8: rank candidates by the accuracy of the int8 model they deploy as.",
    )
    pruning = forms.BooleanField(
        label="Structured pruning (DPF)",
        required=False,
        help_text="Each candidate trains with DPF to its own sparsity gene, drawn and mutated in the range "
        "below (μNAS); its page then shows the pruned network.",
    )
    sparsity_low = forms.FloatField(
        label="Sparsity from", min_value=0, max_value=0.95, initial=0.05, required=False
    )
    sparsity_high = forms.FloatField(
        label="Sparsity to", min_value=0, max_value=0.95, initial=0.9, required=False
    )

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.profiles = {p.pk: p for p in HardwareProfile.objects.for_user(owner)}
        self.datasets = {d.pk: d for d in Dataset.objects.for_user(owner)}
        self.fields["profile"].choices = self._profile_choices()
        self.fields["dataset"].choices = self._dataset_choices()
        self.fields["parallel"].initial = default_parallel()
        digits = next((d for d in self.datasets.values() if d.key == "digits"), None)
        if digits is not None:
            self.fields["dataset"].initial = digits.pk

    def _profile_choices(self) -> list[Any]:
        own = [(p.pk, p.name) for p in self.profiles.values() if not p.is_preset]
        presets = [(p.pk, p.name) for p in self.profiles.values() if p.is_preset]
        return [("My profiles", own), ("Board presets", presets)] if own else [("Board presets", presets)]

    def _dataset_choices(self) -> list[Any]:
        builtin = [
            (d.pk, _dataset_label(d)) for d in self.datasets.values() if d.kind == Dataset.Kind.BUILTIN
        ]
        uploads = [
            (d.pk, _dataset_label(d)) for d in self.datasets.values() if d.kind == Dataset.Kind.UPLOADED
        ]
        return [("Built-in", builtin), ("My uploads", uploads)] if uploads else [("Built-in", builtin)]

    def clean_profile(self) -> HardwareProfile:
        return self.profiles[self.cleaned_data["profile"]]

    def clean_dataset(self) -> Dataset:
        dataset = self.datasets[self.cleaned_data["dataset"]]
        if dataset.key == "fashion-mnist" and not fashion_mnist_available(_fashion_dir()):
            raise forms.ValidationError(
                "Fashion-MNIST is not installed on this server (Debian package dataset-fashion-mnist)."
            )
        return dataset

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        population, sample_size = data.get("population"), data.get("sample_size")
        # MemNAS has no population; the hidden evolution fields are ignored.
        evolution = data.get("strategy") != SearchRun.Strategy.MEMNAS
        if evolution and population and sample_size and sample_size > population:
            self.add_error("sample_size", "The sample size cannot exceed the population.")
        if data.get("pruning"):
            self._clean_sparsity(data, evolution)
        return data

    def _clean_sparsity(self, data: dict[str, Any], evolution: bool) -> None:
        if not evolution:
            self.add_error(
                "pruning", "Structured pruning is a gene of aging evolution and random search, not MemNAS."
            )
        low, high = data.get("sparsity_low"), data.get("sparsity_high")
        if low is None or high is None:
            self.add_error("sparsity_low", "Give the sparsity range for pruning.")
        elif low > high:
            self.add_error("sparsity_high", "The upper sparsity must not be below the lower one.")


def _fashion_dir() -> Any:
    return getattr(settings, "NASWEB_FASHION_MNIST_DIR", None) or None


def _dataset_label(dataset: Dataset) -> str:
    return f"{dataset.name} ({dataset.shape_label}, {dataset.classes} classes)"


PRUNING_NOT_MEMNAS = "Structured pruning is a gene of aging evolution and random search, not MemNAS."


class ExtendRunForm(forms.Form):
    extra_budget = _count("Extra candidates", 1, MAX_EXTEND, initial=10)


# ---- dataset upload ------------------------------------------------------------------------


class DatasetUploadForm(forms.Form):
    """An .npz with x_train, y_train, x_test, y_test, or the four IDX files of the MNIST layout."""

    name = forms.CharField(max_length=200)
    npz = forms.FileField(
        label="Archive (.npz)", required=False, help_text="Arrays x_train, y_train, x_test, y_test."
    )
    train_images = forms.FileField(label="Train images (IDX)", required=False)
    train_labels = forms.FileField(label="Train labels (IDX)", required=False)
    test_images = forms.FileField(label="Test images (IDX)", required=False)
    test_labels = forms.FileField(label="Test labels (IDX)", required=False)

    def __init__(self, *args: Any, owner: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if Dataset.objects.for_user(self.owner).filter(name=name).exists():
            raise forms.ValidationError("A dataset with this name already exists.")
        return name

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        idx = [key for key in IDX_FIELDS if data.get(key)]
        if data.get("npz") and idx:
            raise forms.ValidationError("Upload either an NPZ archive or four IDX files, not both.")
        if not data.get("npz") and len(idx) != len(IDX_FIELDS):
            raise forms.ValidationError("Upload an NPZ archive, or all four IDX files.")
        return data

    @property
    def idx_files(self) -> dict[str, Any] | None:
        if self.cleaned_data.get("npz"):
            return None
        return {key: self.cleaned_data[key] for key in IDX_FIELDS}


class PruneForm(forms.Form):
    """A standalone pruning job: a target sparsity, or "fit the run's hardware profile"."""

    MODE_CHOICES = [
        ("sparsity", "To a target sparsity"),
        ("fit", "Just enough to fit this run's hardware profile"),
    ]

    mode = forms.ChoiceField(
        label="Prune", choices=MODE_CHOICES, initial="sparsity", widget=forms.RadioSelect
    )
    target_sparsity = forms.FloatField(
        label="Sparsity (fraction of channels removed)",
        required=False,
        initial=0.5,
        min_value=0.01,
        max_value=0.95,
        help_text="Fraction of the prunable channels removed, up to 0.95.",
    )
    epochs = forms.IntegerField(
        initial=4,
        min_value=1,
        max_value=20,
        help_text="Fine-tuning epochs (the sparsity ramps over the first half).",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if (
            data.get("mode") == "sparsity"
            and data.get("target_sparsity") is None
            and "target_sparsity" not in self.errors
        ):
            self.add_error("target_sparsity", "Give a target sparsity, or choose to fit the profile.")
        return data


class NotesForm(forms.Form):
    """The user's free-text notes on a run or a candidate."""

    notes = forms.CharField(
        required=False, max_length=NOTES_MAX_LENGTH, widget=forms.Textarea(attrs={"rows": 2}), label="Notes"
    )


class DeployForm(forms.Form):
    """Training a candidate for deployment: blank epochs take the data set's recipe."""

    epochs = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=200,
        help_text="Float epochs before the quantisation-aware ones; blank: the data set's default.",
    )
    augment = forms.BooleanField(
        required=False,
        help_text="Rotations and shifts (and flips for clothing); on by default for built-in data sets.",
    )
    qat = forms.BooleanField(
        required=False, initial=True, label="Quantisation-aware fine-tuning", help_text="Recommended."
    )
