"""Database models: projects, hardware profiles, search runs and their candidates.

Every row belongs to a user, directly (``owner``) or through its run; each model's manager has
``for_user(user)`` so that views and the API never list another user's objects.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


def _is_signed_in(user: Any) -> bool:
    return user is not None and bool(getattr(user, "is_authenticated", False))


def _save_keeping_seq(instance: models.Model, args: Any, kwargs: dict[str, Any]) -> None:
    """Save every field but ``seq``: only searches.events moves it, with an atomic F() update.

    A full save from a stale in-memory copy would otherwise roll the sequence back and freeze
    every open dashboard, which ignores deltas at or below the last number it saw.
    """
    if instance.pk is not None and kwargs.get("update_fields") is None and not kwargs.get("force_insert"):
        kwargs["update_fields"] = [
            f.name for f in instance._meta.concrete_fields if not f.primary_key and f.name != "seq"
        ]
    models.Model.save(instance, *args, **kwargs)


class LeasedWork(models.Model):
    """The state searches.services.leases keeps on a row of background work.

    ``attempts`` counts the times a worker took it (the fencing token of the current one),
    ``lease_expires`` is when its worker must have renewed its lease by (or the reaper puts it
    back in the queue), ``enqueued_at`` when its task was last sent (NULL: not sent yet, the
    broker was down).  Pruning and deployment-training jobs inherit these fields; a new kind of
    job does the same and registers a ``leases.WorkKind``.
    """

    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class OwnedQuerySet(models.QuerySet):
    """Rows whose ``owner`` is the given user; nothing for anonymous users."""

    def for_user(self, user: Any) -> OwnedQuerySet:
        if not _is_signed_in(user):
            return self.none()
        return self.filter(owner=user)


# --------------------------------------------------------------------------------------------
# Project
# --------------------------------------------------------------------------------------------


class Project(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="project_unique_name_per_owner"),
        ]

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------
# Hardware profile
# --------------------------------------------------------------------------------------------


class Core(models.TextChoices):
    """MCU cores; the values are exactly the keys of ``searches.engine.resources.CORES``."""

    AVR = "avr", "AVR 8-bit"
    CORTEX_M0PLUS = "cortex-m0plus", "Cortex-M0+"
    CORTEX_M3 = "cortex-m3", "Cortex-M3"
    CORTEX_M4F = "cortex-m4f", "Cortex-M4F"
    CORTEX_M7 = "cortex-m7", "Cortex-M7"
    CORTEX_M33 = "cortex-m33", "Cortex-M33"
    XTENSA_LX7 = "xtensa-lx7", "Xtensa LX7"


class HardwareProfileQuerySet(models.QuerySet):
    def presets(self) -> HardwareProfileQuerySet:
        return self.filter(is_preset=True)

    def for_user(self, user: Any) -> HardwareProfileQuerySet:
        """The user's own profiles plus the built-in (read-only) presets."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(Q(owner=user) | Q(is_preset=True))

    def owned_by(self, user: Any) -> HardwareProfileQuerySet:
        """Only the profiles the user may edit or delete."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(owner=user)


class HardwareProfile(models.Model):
    """A memory/latency budget for one target: a built-in board preset or a user's own."""

    # Null only for the built-in presets, which belong to nobody and are read-only.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="hardware_profiles",
    )
    name = models.CharField(max_length=200)
    board = models.CharField(max_length=200, blank=True)
    mcu = models.CharField("MCU", max_length=100, blank=True)
    core = models.CharField(max_length=32, choices=Core.choices)
    clock_mhz = models.FloatField("clock (MHz)", validators=[MinValueValidator(0.001)])
    # 1 KB = 1024 bytes throughout nasweb.
    sram_kb = models.PositiveIntegerField("SRAM (KB)", validators=[MinValueValidator(1)])
    flash_kb = models.PositiveIntegerField("flash (KB)", validators=[MinValueValidator(1)])
    latency_ms = models.FloatField("latency budget (ms)", null=True, blank=True)
    max_macs = models.PositiveBigIntegerField(
        "MACs limit", null=True, blank=True, validators=[MinValueValidator(1)]
    )
    is_preset = models.BooleanField(default=False, editable=False)
    notes = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = HardwareProfileQuerySet.as_manager()

    class Meta:
        ordering = ["-is_preset", "name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(is_preset=True, owner__isnull=True) | Q(is_preset=False, owner__isnull=False),
                name="hardwareprofile_preset_xor_owner",
            ),
            models.UniqueConstraint(fields=["owner", "name"], name="hardwareprofile_unique_name_per_owner"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(is_preset=True), name="hardwareprofile_unique_preset_name"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def sram_bytes(self) -> int:
        return self.sram_kb * 1024

    @property
    def flash_bytes(self) -> int:
        return self.flash_kb * 1024


# --------------------------------------------------------------------------------------------
# Search run
# --------------------------------------------------------------------------------------------


class SearchRun(models.Model):
    """One search: its configuration, its resumable engine state and its progress."""

    class Strategy(models.TextChoices):
        AGING_EVOLUTION = "aging_evolution", "Aging evolution (μNAS)"
        RANDOM = "random", "Random search"
        MEMNAS = "memnas", "MemNAS (grow and trim)"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="search_runs")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, null=True, blank=True, related_name="runs")
    # Deleting a profile keeps its runs: the budgets they searched under are in `config`.
    profile = models.ForeignKey(
        HardwareProfile, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    name = models.CharField(max_length=200, blank=True)
    dataset = models.CharField(max_length=64)
    strategy = models.CharField(max_length=32, choices=Strategy.choices, default=Strategy.AGING_EVOLUTION)
    # The engine's search configuration as JSON: bounds, population, sample size, budget,
    # fidelity, seed.
    config = models.JSONField(default=dict, blank=True)
    # The engine's serialised search state; any worker resumes the run from it.
    state = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    evaluated = models.PositiveIntegerField(default=0)
    budget = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # Sequence number of the run's last change; every change bumps it (see searches.events).
    seq = models.PositiveBigIntegerField(default=0)
    # Id of the Celery task driving the run, to revoke it on cancel.
    task_id = models.CharField(max_length=255, blank=True)
    # The user's own free text about the run (shown in lists and the comparison).
    notes = models.TextField(blank=True, max_length=2000)
    # When the start task of a pending run was last sent (NULL: not yet; see services.leases).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # The run finished and its top K still await deployment jobs (an outbox row: the
    # deploy_top_k task clears it; see services.execution.DEPLOY_TOP_K), and when that task was
    # last sent.
    deploy_pending = models.BooleanField(default=False)
    deploy_enqueued_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created"], name="searchrun_owner_created"),
            models.Index(fields=["status"], name="searchrun_status"),
        ]

    def __str__(self) -> str:
        return self.name or f"{self.get_strategy_display()} on {self.dataset_name} #{self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        _save_keeping_seq(self, args, kwargs)

    @property
    def is_active(self) -> bool:
        return self.status in {self.Status.PENDING, self.Status.RUNNING}

    @property
    def dataset_name(self) -> str:
        """The dataset as its owner named it ("digits", "my sensors"), not its key ("upload:3")."""
        if "_dataset_name" not in self.__dict__:
            name_datasets([self])
        return str(self.__dict__["_dataset_name"])


def name_datasets(runs: Any) -> list[SearchRun]:
    """Look up the dataset names of many runs at once (one query); returns the runs as a list."""
    runs = list(runs)
    ids = {int(r.dataset.removeprefix(UPLOAD_PREFIX)) for r in runs if _upload_key(r.dataset)}
    names = dict(Dataset.objects.filter(pk__in=ids).values_list("pk", "name")) if ids else {}
    for run in runs:
        key = run.dataset
        if _upload_key(key):
            pk = int(key.removeprefix(UPLOAD_PREFIX))
            run.__dict__["_dataset_name"] = names.get(pk, f"{key} (deleted)")
        else:
            run.__dict__["_dataset_name"] = key
    return runs


def _upload_key(key: str) -> bool:
    return key.startswith(UPLOAD_PREFIX) and key.removeprefix(UPLOAD_PREFIX).isdigit()


# --------------------------------------------------------------------------------------------
# Candidate
# --------------------------------------------------------------------------------------------


class CandidateQuerySet(models.QuerySet):
    def for_user(self, user: Any) -> CandidateQuerySet:
        """Candidates of the user's own runs."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(run__owner=user)


def weights_upload_to(candidate: Candidate, filename: str) -> str:
    return f"weights/run-{candidate.run_id}/{filename}"


class Candidate(LeasedWork):
    """One evaluated (or rejected) architecture of a run.

    Its training is leased work (the ``LeasedWork`` fields); so is its export verification,
    with its own ``export_*`` copies of those fields.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"
        # Stopped by a cancelled run before it finished; still owed to the search, so resuming
        # or extending the run queues it again.
        CANCELLED = "cancelled", "Cancelled"

    class ExportStatus(models.TextChoices):
        """Where the verification of the C export stands (searches.services.export)."""

        NONE = "none", "Not verified"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"
        # Not a failure of the export: tools missing where the check ran, or a core (AVR,
        # Xtensa) the Cortex-M checks cannot build for.
        UNAVAILABLE = "unavailable", "Unavailable"

    # Indexes from here on are pruning jobs' results (searches.services.pruning), never the strategy's.
    PRUNED_INDEX_BASE = 1_000_000
    # Candidates trained for deployment: DEPLOY_INDEX_BASE + the job's id.
    DEPLOY_INDEX_BASE = 2_000_000

    run = models.ForeignKey(SearchRun, on_delete=models.CASCADE, related_name="candidates")
    # Position in the run's evaluation order (0-based); unique within the run.
    index = models.PositiveIntegerField()
    architecture = models.JSONField()
    parent = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children"
    )
    mutation = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    feasible = models.BooleanField(default=False)
    on_pareto = models.BooleanField(default=False)
    val_accuracy = models.FloatField(null=True, blank=True)
    test_accuracy = models.FloatField(null=True, blank=True)
    peak_sram_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    flash_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    macs = models.PositiveBigIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    params = models.PositiveBigIntegerField(null=True, blank=True)
    train_seconds = models.FloatField(null=True, blank=True)
    reject_reason = models.TextField(blank=True)
    # ASHA: the rung of the results above (0 without multi-fidelity), and one entry per rung
    # trained ({"rung", "epochs", "val_accuracy", "test_accuracy", "int8_val_accuracy",
    # "int8_test_accuracy", "train_seconds"}, or {"rung", "epochs", "error"} for a failed promotion).
    rung = models.PositiveSmallIntegerField(default=0)
    rung_results = models.JSONField(default=list, blank=True)
    # The run's sequence number when this row last changed: a client that saw up to N asks for seq > N.
    seq = models.PositiveBigIntegerField(default=0, db_index=True)
    # Empty until trained weights are stored (weights/run-<id>/ in the artifact store).
    weights = models.FileField(upload_to=weights_upload_to, max_length=255, blank=True)
    # The post-training int8 model (searches.engine.deploy.int8.QuantModel as .npz, next to the
    # weights) and its accuracies on the same validation and test images as the float ones.
    int8_model = models.FileField(upload_to=weights_upload_to, max_length=255, blank=True)
    int8_val_accuracy = models.FloatField(null=True, blank=True)
    int8_test_accuracy = models.FloatField(null=True, blank=True)
    # Trained for deployment (searches.services.deployment) from its parent: longer, augmented
    # and quantisation-aware, rather than at the search's fidelity.
    for_deployment = models.BooleanField(default=False)
    # The last verification of the C export (host bit-exactness, Cortex-M build, QEMU run):
    # its state and, once finished, its report (ExportVerification.to_json(), or an error).
    export_status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.NONE)
    export_report = models.JSONField(null=True, blank=True)
    export_requested = models.DateTimeField(null=True, blank=True)
    export_finished = models.DateTimeField(null=True, blank=True)
    # The user's own free text about the candidate (shown in the run's table and CSV).
    notes = models.TextField(blank=True, max_length=2000)
    export_attempts = models.PositiveSmallIntegerField(default=0)
    export_lease_expires = models.DateTimeField(null=True, blank=True)
    export_enqueued_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = CandidateQuerySet.as_manager()

    class Meta:
        ordering = ["run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="candidate_unique_index_per_run"),
        ]
        indexes = [
            models.Index(fields=["run", "status"], name="candidate_run_status"),
            models.Index(fields=["run", "on_pareto"], name="candidate_run_pareto"),
            # The reaper's scans: work whose lease ran out, and queued work not sent.
            models.Index(fields=["status", "lease_expires"], name="candidate_status_lease"),
            models.Index(fields=["export_status", "export_lease_expires"], name="candidate_export_lease"),
        ]

    def __str__(self) -> str:
        return f"candidate {self.index} of run {self.run_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        _save_keeping_seq(self, args, kwargs)

    @property
    def is_trained(self) -> bool:
        return self.status == self.Status.DONE and bool(self.weights)

    @property
    def is_pruned(self) -> bool:
        """Made by a pruning job, not proposed by the run's strategy."""
        return self.PRUNED_INDEX_BASE <= self.index < self.DEPLOY_INDEX_BASE

    @property
    def made_by_job(self) -> bool:
        """Made by a pruning or deployment-training job rather than proposed by the strategy."""
        return self.index >= self.PRUNED_INDEX_BASE

    @property
    def label(self) -> str:
        """How pages name the candidate: "#7" as the strategy numbered it, "P3" for pruning job 3's,
        "D2" for deployment-training job 2's."""
        return candidate_label(self.index)

    @property
    def export_busy(self) -> bool:
        return self.export_status in {self.ExportStatus.QUEUED, self.ExportStatus.RUNNING}


def candidate_label(index: int) -> str:
    if index >= Candidate.DEPLOY_INDEX_BASE:
        return f"D{index - Candidate.DEPLOY_INDEX_BASE}"
    if index >= Candidate.PRUNED_INDEX_BASE:
        return f"P{index - Candidate.PRUNED_INDEX_BASE}"
    return f"#{index}"


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class DatasetQuerySet(models.QuerySet):
    def for_user(self, user: Any) -> DatasetQuerySet:
        """The user's own uploads plus the built-in datasets."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(Q(owner=user) | Q(kind=Dataset.Kind.BUILTIN))

    def owned_by(self, user: Any) -> DatasetQuerySet:
        """Only the uploads the user may delete."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(owner=user)


def dataset_upload_to(dataset: Dataset, filename: str) -> str:
    return f"datasets/user-{dataset.owner_id}/{filename}"


class Dataset(models.Model):
    """A training set: a built-in one (digits, Fashion-MNIST) or a user's validated upload.

    Uploads are stored as one canonical ``.npz`` (exactly x_train, y_train, x_test, y_test)
    whatever their original format, so there is a single loader for them.  A run names its dataset by
    ``key``: the built-in name, or ``upload:<id>``.
    """

    class Kind(models.TextChoices):
        BUILTIN = "builtin", "Built-in"
        UPLOADED = "uploaded", "Uploaded"

    # Null only for the built-in datasets, which belong to nobody.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="datasets"
    )
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.UPLOADED)
    file = models.FileField(upload_to=dataset_upload_to, max_length=255, blank=True)
    # SHA-256 of the stored file: workers cache their copy under it (searches.services.datasets).
    sha256 = models.CharField(max_length=64, blank=True)
    # [H, W, C] of one image.
    input_shape = models.JSONField(default=list)
    classes = models.PositiveIntegerField()
    n_train = models.PositiveIntegerField()
    n_test = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    objects = DatasetQuerySet.as_manager()

    class Meta:
        ordering = ["kind", "name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind="builtin", owner__isnull=True) | Q(kind="uploaded", owner__isnull=False),
                name="dataset_builtin_xor_owner",
            ),
            models.UniqueConstraint(fields=["owner", "name"], name="dataset_unique_name_per_owner"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(kind="builtin"), name="dataset_unique_builtin_name"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def key(self) -> str:
        """How a run's ``dataset`` field names this dataset."""
        return self.name if self.kind == self.Kind.BUILTIN else f"{UPLOAD_PREFIX}{self.pk}"

    @property
    def shape_label(self) -> str:
        return "x".join(str(d) for d in self.input_shape)


UPLOAD_PREFIX = "upload:"


# --------------------------------------------------------------------------------------------
# Pruning job
# --------------------------------------------------------------------------------------------


class CandidateJobQuerySet(models.QuerySet):
    def for_user(self, user: Any) -> CandidateJobQuerySet:
        """Jobs on candidates of the user's own runs."""
        if not _is_signed_in(user):
            return self.none()
        return self.filter(source__run__owner=user)


class CandidateJob(LeasedWork):
    """What every job on one trained candidate keeps: its settings, state, per-epoch progress,
    result and times.  A subclass adds ``source`` and ``result_candidate`` (each kind has its
    own reverse names on Candidate) and says what ``config``, ``progress`` and ``result`` hold.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    config = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=list, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)

    objects = CandidateJobQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-created", "-id"]

    @property
    def is_active(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.RUNNING}


class PruningJob(CandidateJob):
    """A standalone DPF pruning of one trained candidate (searches.services.pruning).

    ``config`` is PruneConfig.to_json(); ``progress`` one PruneProgress (as a dict) per finished
    epoch, epoch 0 being the unpruned model; ``result`` PruneResult.to_json() plus the int8
    accuracies of both sides (the before/after table).
    """

    source = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="pruning_jobs")
    # The pruned model, a new candidate of the source's run.
    result_candidate = models.ForeignKey(
        Candidate, on_delete=models.SET_NULL, null=True, blank=True, related_name="pruned_from_jobs"
    )

    def __str__(self) -> str:
        return f"pruning job {self.pk} of candidate {self.source_id}"


class DeploymentJob(CandidateJob):
    """Training one trained candidate for deployment (searches.services.deployment).

    ``config`` is Recipe.to_json() (epochs, QAT epochs, augmentation...); ``progress`` one
    DeployEpoch (as a dict) per finished epoch, the float and int8 learning curves; ``result``
    the selected epoch, accuracies, time, and the source's numbers for the gain.
    """

    source = models.ForeignKey(Candidate, on_delete=models.CASCADE, related_name="deployment_jobs")
    result_candidate = models.ForeignKey(
        Candidate, on_delete=models.SET_NULL, null=True, blank=True, related_name="deployed_from_jobs"
    )

    def __str__(self) -> str:
        return f"deployment job {self.pk} of candidate {self.source_id}"
