"""Creating search runs and driving them, with every proposal and result stored as rows.

The database is the truth: the engine's state is saved on the run after every event, so a
run can be resumed by any process.  This module drives a run in one process (the CLI);
``searches.services.execution`` drives it on Celery workers.  Both store rows through
``store_proposal`` / ``store_result`` / ``save_state``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from searches import events
from searches.engine.space.arch import Architecture
from searches.engine.space.sampling import SpaceConfig
from searches.engine.strategies.asha import rung_epochs
from searches.engine.strategies.base import EvalFailure, EvalResult, Proposal, SearchStrategy, measure
from searches.engine.strategies.config import Bounds, Limits, SearchConfig
from searches.engine.strategies.driver import SearchEvent, run_search
from searches.engine.strategies.options import MemNASConfig
from searches.engine.strategies.registry import from_state_json, make_strategy
from searches.engine.training.datasets import Dataset, load_dataset
from searches.engine.training.model import build_model
from searches.engine.training.train import Fidelity, train_and_evaluate
from searches.models import UPLOAD_PREFIX, Candidate, HardwareProfile, SearchRun
from searches.services.artifacts import load_weights_file, save_trained
from searches.services.datasets import load_uploaded

# μNAS-style soft bounds on (error, MACs) per dataset; SRAM and flash bounds come from the
# profile.  Datasets without an entry get the generic row.
DATASET_BOUNDS: dict[str, tuple[float, int]] = {
    "digits": (0.05, 1_000_000),
    "fashion-mnist": (0.10, 30_000_000),
    "": (0.10, 30_000_000),
}

# Fidelity that keeps one candidate to seconds on two cores (see docs/benchmarks.md).
DEFAULT_FIDELITY: dict[str, Fidelity] = {
    "digits": Fidelity(epochs=10, train_subset=None, batch_size=32, lr=1e-2),
    "fashion-mnist": Fidelity(),
}


def default_fidelity(dataset: str) -> Fidelity:
    return DEFAULT_FIDELITY.get(dataset, Fidelity())


@functools.lru_cache(maxsize=4)
def get_dataset(name: str) -> Dataset:
    """Datasets are read once per process (Fashion-MNIST takes a second to parse).

    ``name`` is a built-in dataset's name or ``upload:<id>`` for a user's uploaded dataset.
    """
    if name.startswith(UPLOAD_PREFIX):
        return load_uploaded(name)
    return load_dataset(name, getattr(settings, "NASWEB_FASHION_MNIST_DIR", None) or None)


def limits_for(
    profile: HardwareProfile | None,
    sram_kb: float | None = None,
    flash_kb: float | None = None,
    latency_ms: float | None = None,
    max_macs: int | None = None,
) -> Limits:
    """Hard limits: the profile's, with explicit values taking precedence."""
    sram = sram_kb if sram_kb is not None else (profile.sram_kb if profile else None)
    flash = flash_kb if flash_kb is not None else (profile.flash_kb if profile else None)
    latency = latency_ms if latency_ms is not None else (profile.latency_ms if profile else None)
    return Limits(
        sram_bytes=None if sram is None else int(sram * 1024),
        flash_bytes=None if flash is None else int(flash * 1024),
        latency_ms=latency,
        core=profile.core if profile else None,
        clock_mhz=profile.clock_mhz if profile else None,
        macs=max_macs if max_macs is not None else (profile.max_macs if profile else None),
    )


def make_config(
    dataset: Dataset,
    limits: Limits,
    *,
    budget: int,
    seed: int = 0,
    strategy: str = "aging_evolution",
    population: int | None = None,
    sample_size: int | None = None,
    fidelity: Fidelity | None = None,
    strategy_options: dict[str, Any] | None = None,
    sparsity: tuple[float, float] | None = None,
    fidelity_schedule: str = SearchConfig.fidelity_schedule,
    asha_eta: int = SearchConfig.asha_eta,
    asha_max_rung: int = SearchConfig.asha_max_rung,
    error_objective: str = SearchConfig.error_objective,
) -> SearchConfig:
    """A search config whose μNAS bounds are the profile's limits plus per-dataset defaults.

    ``strategy_options`` are settings only one strategy reads (MemNAS: lambda, beta, top_k...);
    a MemNAS run records all of its settings, the defaults filled in, so that the run page shows
    what it ran with and a later change of default never changes a stored run.
    ``sparsity`` turns on μNAS's structured-pruning gene with that (low, high) range;
    ``fidelity_schedule="asha"`` trains in ASHA rungs (``fidelity`` is rung 0);
    ``error_objective`` is "float" or "int8" validation error.
    Raises ValueError (naming the setting) when the engine refuses the configuration.
    """
    error_bound, macs_bound = DATASET_BOUNDS.get(dataset.name, DATASET_BOUNDS[""])
    population = population or max(4, min(100, budget // 3))
    fidelity = fidelity or default_fidelity(dataset.name)
    options = dict(strategy_options or {})
    if strategy == "memnas":
        options = MemNASConfig.from_json(options).to_json()
    return SearchConfig(
        space=SpaceConfig(dataset.input_shape, dataset.classes),
        budget=budget,
        bounds=Bounds(
            error=error_bound,
            peak_sram_bytes=limits.sram_bytes,
            flash_bytes=limits.flash_bytes,
            macs=limits.macs or macs_bound,
        ),
        limits=limits,
        strategy=strategy,  # type: ignore[arg-type]
        population=population,
        sample_size=sample_size or max(2, min(25, population // 4)),
        seed=seed,
        fidelity=asdict(fidelity) | {"seed": seed},
        strategy_options=options,
        sparsity=sparsity,
        fidelity_schedule=fidelity_schedule,  # type: ignore[arg-type]
        asha_eta=asha_eta,
        asha_max_rung=asha_max_rung,
        error_objective=error_objective,  # type: ignore[arg-type]
    )


_SEED_LABELS = {"minimal": "minimal seed", "random": "random seed", "single_blocks": "round 0"}
_RANKER_LABELS = {"candidate": "per candidate", "list": "list"}
_MEMORY_SCALE_LABELS = {"backbone": "the backbone's", "budget": "the board's budget"}
_ON_STALL_LABELS = {"best_child": "best child", "raise_lambda": "raise λ"}


def strategy_settings(strategy: str, config: dict[str, Any]) -> list[tuple[str, str]]:
    """A run's strategy settings as (name, value) pairs for its page, from its stored config.

    MemNAS: λ, β, top-k, the start (round 0 with its size) and the ranking model; the other
    strategies: population and sample size.  Runs stored before every MemNAS setting was
    recorded show the engine's defaults for the ones they lack.  Random search has none.
    """
    if strategy == "aging_evolution":
        return [
            ("population", str(config.get("population"))),
            ("sample size", str(config.get("sample_size"))),
        ]
    if strategy != "memnas":
        return []
    stored = config.get("strategy_options") or {}
    try:
        options = MemNASConfig.from_json(stored)
    except (TypeError, ValueError):  # a hand-edited config: show it as stored
        return [(str(name), str(value)) for name, value in stored.items()]
    start = _SEED_LABELS[options.seed_backbone]
    if options.seed_backbone == "single_blocks":
        start += f" of {options.round0_size}"
    return [
        ("λ", f"{options.lam:g}"),
        ("β", f"{options.beta:g}"),
        ("top-k", str(options.top_k)),
        ("start", start),
        ("ranking model", _RANKER_LABELS[options.ranker]),
        ("memory scale", _MEMORY_SCALE_LABELS[options.memory_scale]),
        ("at a local optimum", _ON_STALL_LABELS[options.on_stall]),
    ]


def create_run(
    owner: Any,
    dataset: str,
    config: SearchConfig,
    *,
    profile: HardwareProfile | None = None,
    project: Any = None,
    name: str = "",
) -> SearchRun:
    return SearchRun.objects.create(
        owner=owner,
        project=project,
        profile=profile,
        name=name,
        dataset=dataset,
        strategy=config.strategy,
        config=config.to_json(),
        budget=config.budget,
    )


def search_config(run: SearchRun) -> SearchConfig:
    """The engine's part of ``run.config`` (which also holds execution settings such as ``parallel``)."""
    fields = SearchConfig.__dataclass_fields__
    return SearchConfig.from_json({key: value for key, value in run.config.items() if key in fields})


def load_strategy(run: SearchRun) -> SearchStrategy:
    """The run's strategy, resumed from its saved state when it has one."""
    if run.state:
        return from_state_json(run.state)
    return make_strategy(search_config(run))


# ---- rows: how proposals and results are stored (shared by every way of driving a run) ----


def store_proposal(run: SearchRun, proposal: Proposal, status: str | None = None) -> Candidate:
    """Write ``proposal`` as a Candidate row (pending, or rejected with its reason) and announce it.

    An ASHA promotion only queues the candidate's existing row again: it keeps its description
    and its results so far (the dashboard shows them, with the rung, while it trains further).
    """
    if proposal.rung > 0:
        return _store_promotion(run, proposal, status or Candidate.Status.PENDING)
    if status is None:
        status = Candidate.Status.REJECTED if proposal.rejected else Candidate.Status.PENDING
    resources = proposal.resources
    parent = None
    if proposal.parent_id is not None:
        parent = Candidate.objects.filter(run=run, index=proposal.parent_id).first()
    candidate, _ = Candidate.objects.update_or_create(
        run=run,
        index=proposal.id,
        defaults={
            "architecture": proposal.architecture.to_json(),
            "parent": parent,
            "mutation": proposal.description[:200],
            "status": status,
            "feasible": not proposal.rejected,
            "reject_reason": proposal.reject_reason or "",
            "peak_sram_bytes": resources.get("peak_sram_bytes"),
            "flash_bytes": resources.get("flash_bytes"),
            "macs": resources.get("macs"),
            "params": resources.get("params"),
            "latency_ms": resources.get("latency_ms"),
        },
    )
    events.candidate_changed(candidate)
    return candidate


def _store_promotion(run: SearchRun, proposal: Proposal, status: str) -> Candidate:
    rows = Candidate.objects.filter(run=run, index=proposal.id)
    # A fresh attempt count: the fencing in execution also checks the rung, so no attempt of
    # the rung below can tell this one's result.
    rows.update(status=status, reject_reason="", attempts=0, lease_expires=None, enqueued_at=None)
    candidate = rows.get()
    events.candidate_changed(candidate)
    return candidate


def store_result(
    run: SearchRun,
    strategy: SearchStrategy,
    proposal_id: int,
    result: EvalResult | EvalFailure,
    rung: int = 0,
) -> None:
    """Write a told result on its row, refresh the run's Pareto flags and announce every changed row.

    ``rung`` > 0 is an ASHA promotion's result: it replaces the row's results (the earlier
    rungs' stay in ``rung_results``); a failed promotion leaves them and records why.
    """
    rows = Candidate.objects.filter(run=run, index=proposal_id)
    candidate = rows.first()
    if candidate is None:
        return
    entry = _rung_entry(run, rung, result)
    history = [e for e in candidate.rung_results if e.get("rung") != rung] + [entry]
    if isinstance(result, EvalFailure) and rung > 0:
        rows.update(status=Candidate.Status.DONE, rung_results=history)
        changed = [candidate.pk]
    elif isinstance(result, EvalFailure):
        rows.update(status=Candidate.Status.FAILED, reject_reason=result.reason)
        changed = [candidate.pk]
    else:
        metrics = result.metrics
        seconds = [e["train_seconds"] for e in history if e.get("train_seconds") is not None]
        rows.update(
            status=Candidate.Status.DONE,
            rung=rung,
            rung_results=history,
            val_accuracy=result.val_accuracy,
            test_accuracy=result.test_accuracy,
            # Every rung's training: what the candidate cost in all.
            train_seconds=sum(seconds) if seconds else None,
            weights=metrics.get("weights", ""),
            **_pruned_fields(metrics),
            int8_model=metrics.get("int8_model", ""),
            int8_val_accuracy=metrics.get("int8_val_accuracy"),
            int8_test_accuracy=metrics.get("int8_test_accuracy"),
            # New weights: an earlier verification no longer describes them.
            export_status=Candidate.ExportStatus.NONE,
            export_report=None,
        )
        changed = [candidate.pk]
        changed += [pk for pk in _update_pareto_flags(run, strategy) if pk not in changed]
    events.candidates_changed(run.pk, changed)


def _rung_entry(run: SearchRun, rung: int, result: EvalResult | EvalFailure) -> dict[str, Any]:
    """One rung's line of a candidate's ``rung_results``."""
    config = search_config(run)
    epochs = rung_epochs(int(config.fidelity.get("epochs", 1)), config.asha_eta, rung)
    if isinstance(result, EvalFailure):
        return {"rung": rung, "epochs": epochs, "error": result.reason}
    metrics = result.metrics
    return {
        "rung": rung,
        "epochs": epochs,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "int8_val_accuracy": metrics.get("int8_val_accuracy"),
        "int8_test_accuracy": metrics.get("int8_test_accuracy"),
        "train_seconds": metrics.get("train_seconds"),
    }


def _pruned_fields(metrics: dict[str, Any]) -> dict[str, Any]:
    """A candidate pruned during training is stored as the pruned network it became."""
    if "architecture" not in metrics:
        return {}
    resources = metrics["resources"]
    return {
        "architecture": metrics["architecture"],
        "peak_sram_bytes": resources.get("peak_sram_bytes"),
        "flash_bytes": resources.get("flash_bytes"),
        "macs": resources.get("macs"),
        "params": resources.get("params"),
        "latency_ms": resources.get("latency_ms"),
    }


def _update_pareto_flags(run: SearchRun, strategy: SearchStrategy) -> list[int]:
    """Flag exactly the strategy's archive; return the ids of rows whose flag flipped."""
    front = [m.id for m in strategy.archive]
    candidates = Candidate.objects.filter(run=run)
    leaving = candidates.exclude(index__in=front).filter(on_pareto=True)
    joining = candidates.filter(index__in=front, on_pareto=False)
    flipped = [*leaving.values_list("pk", flat=True), *joining.values_list("pk", flat=True)]
    leaving.update(on_pareto=False)
    candidates.filter(pk__in=flipped, index__in=front).update(on_pareto=True)
    return flipped


def save_state(run: SearchRun, strategy: SearchStrategy) -> None:
    """Store the strategy's state and progress on the run (announce with ``events.run_changed``)."""
    run.state = strategy.state_to_json()
    run.evaluated = strategy.told
    run.save(update_fields=["state", "evaluated"])


class RunRecorder:
    """Turns in-process search events into Candidate rows and keeps the run's state current."""

    def __init__(self, run: SearchRun, strategy: SearchStrategy) -> None:
        self.run = run
        self.strategy = strategy

    def __call__(self, event: SearchEvent) -> None:
        proposal = event.proposal
        with transaction.atomic():
            if event.kind == "rejected":
                store_proposal(self.run, proposal)
            elif event.kind == "proposed":
                # Trained right away in this process: there is no queue to wait in.
                store_proposal(self.run, proposal, Candidate.Status.RUNNING)
            else:
                assert event.result is not None
                store_result(self.run, self.strategy, proposal.id, event.result, proposal.rung)
            save_state(self.run, self.strategy)
            if event.kind in ("evaluated", "failed"):
                events.run_changed(self.run)


def make_evaluator(
    run: SearchRun, dataset: Dataset, fidelity: Fidelity
) -> Callable[[Architecture, Proposal], EvalResult]:
    """Train a proposal at the run's fidelity and store its weights in the artifact store."""

    def evaluate(arch: Architecture, proposal: Proposal) -> EvalResult:
        return train_proposal(run, dataset, fidelity, proposal)

    return evaluate


def train_proposal(
    run: SearchRun,
    dataset: Dataset,
    fidelity: Fidelity,
    proposal: Proposal,
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Train a proposal, save its weights and int8 model; raises on divergence, TrainingStopped if stopped."""
    if proposal.rung > 0:
        return _train_promotion(run, dataset, fidelity, proposal, stop)
    if proposal.sparsity is not None:
        return _train_pruned(run, dataset, fidelity, proposal, stop)
    result = train_and_evaluate(proposal.architecture, dataset, fidelity, stop=stop)
    if result.diverged:
        raise RuntimeError("training diverged (loss is not finite)")
    weights, int8 = save_trained(
        run, proposal.id, proposal.architecture, result.state_dict, dataset, fidelity
    )
    return EvalResult(
        result.val_accuracy,
        result.test_accuracy,
        metrics={
            "train_seconds": result.train_seconds,
            "weights": weights,
            **int8,
        },
    )


def _train_promotion(
    run: SearchRun, dataset: Dataset, fidelity: Fidelity, proposal: Proposal, stop: Callable[[], bool] | None
) -> EvalResult:
    """An ASHA promotion: continue from the rung below's weights up to this rung's epochs, quantise again."""
    config = search_config(run)
    before = rung_epochs(fidelity.epochs, config.asha_eta, proposal.rung - 1)
    total = rung_epochs(fidelity.epochs, config.asha_eta, proposal.rung)
    if not proposal.resume_weights:
        raise RuntimeError(f"rung {proposal.rung - 1} stored no weights to continue from")
    state = load_weights_file(proposal.architecture, proposal.resume_weights).state_dict()
    result = train_and_evaluate(
        proposal.architecture,
        dataset,
        dataclasses.replace(fidelity, epochs=total - before),
        stop=stop,
        initial_state=state,
    )
    if result.diverged:
        raise RuntimeError("training diverged (loss is not finite)")
    weights, int8 = save_trained(
        run, proposal.id, proposal.architecture, result.state_dict, dataset, fidelity, proposal.rung
    )
    return EvalResult(
        result.val_accuracy,
        result.test_accuracy,
        metrics={"train_seconds": result.train_seconds, "epochs": total, "weights": weights, **int8},
    )


# μNAS trains a pruned candidate from scratch with DPF: masks start growing after 10% of the
# epochs and reach the candidate's sparsity at 80%, leaving the rest to fine-tune.
PRUNE_START, PRUNE_FINISH = 0.1, 0.8


def _train_pruned(
    run: SearchRun, dataset: Dataset, fidelity: Fidelity, proposal: Proposal, stop: Callable[[], bool] | None
) -> EvalResult:
    """Train with DPF to the proposal's sparsity; the result describes the pruned model."""
    from searches.engine.training.pruning import PruneConfig, prune

    config = PruneConfig(
        target_sparsity=proposal.sparsity,
        epochs=fidelity.epochs,
        start_epoch=PRUNE_START * fidelity.epochs,
        finish_epoch=PRUNE_FINISH * fidelity.epochs,
        lr=fidelity.lr,
        weight_decay=fidelity.weight_decay,
        batch_size=fidelity.batch_size,
        train_subset=fidelity.train_subset,
        val_fraction=fidelity.val_fraction,
        seed=fidelity.seed,
    )
    torch.manual_seed(fidelity.seed)
    result = prune(proposal.architecture, build_model(proposal.architecture), dataset, config, stop=stop)
    weights, int8 = save_trained(
        run, proposal.id, result.architecture, result.model.state_dict(), dataset, fidelity
    )
    return EvalResult(
        result.after.val_accuracy,
        result.after.test_accuracy,
        metrics={
            "train_seconds": result.seconds,
            "weights": weights,
            "architecture": result.architecture.to_json(),
            "resources": measure(result.architecture, search_config(run).limits),
            "sparsity": result.sparsity,
            **int8,
        },
    )


def run_in_process(
    run: SearchRun,
    on_event: Callable[[SearchEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SearchRun:
    """Drive ``run`` to completion in this process, storing every event; resumable."""
    strategy = load_strategy(run)
    config = search_config(run)
    dataset = get_dataset(run.dataset)
    fidelity = Fidelity(**config.fidelity)
    recorder = RunRecorder(run, strategy)
    run.status = SearchRun.Status.RUNNING
    run.started = run.started or timezone.now()
    run.save(update_fields=["status", "started"])
    events.run_changed(run)

    def on_any(event: SearchEvent) -> None:
        recorder(event)
        if on_event is not None:
            on_event(event)

    try:
        run_search(strategy, make_evaluator(run, dataset, fidelity), on_any, should_stop)
    except BaseException as exc:
        _finish_run(
            run,
            SearchRun.Status.CANCELLED if isinstance(exc, KeyboardInterrupt) else SearchRun.Status.FAILED,
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    done = strategy.is_done() or strategy.stop_reason is not None
    status = SearchRun.Status.DONE if done else SearchRun.Status.CANCELLED
    _finish_run(run, status, error=strategy.stop_reason or "")
    return run


def _finish_run(run: SearchRun, status: str, error: str = "") -> None:
    run.status = status
    run.error = error
    run.finished = timezone.now()
    run.save(update_fields=["status", "error", "finished"])
    events.run_changed(run)
