"""What a search is asked to do: its strategy, budget, bounds, hard limits and space."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from searches.engine.resources.latency import CORES, latency_ms
from searches.engine.resources.opgraph import OpGraph
from searches.engine.space.sampling import SpaceConfig
from searches.engine.space.sparsity import MAX_SPARSITY
from searches.engine.strategies.options import MemNASConfig

OBJECTIVES: tuple[str, ...] = ("error", "peak_sram_bytes", "flash_bytes", "macs")
STRATEGIES: tuple[str, ...] = ("aging_evolution", "random", "memnas")

StrategyName = Literal["aging_evolution", "random", "memnas"]
# "off": every candidate trained once at the run's fidelity; "asha": successive-halving rungs
# (searches.engine.strategies.asha).
FIDELITY_SCHEDULES: tuple[str, ...] = ("off", "asha")
FidelitySchedule = Literal["off", "asha"]
# Which validation error the objectives use: the float model's, or its int8 model's (every
# trained candidate is quantised right after training, so both are measured).
ERROR_OBJECTIVES: tuple[str, ...] = ("float", "int8")
ErrorObjective = Literal["float", "int8"]
ASHA_MAX_ETA = 10
ASHA_MAX_RUNG = 4
# The most epochs ASHA's top rung may train one candidate for (epochs x eta ** max_rung).
ASHA_MAX_EPOCHS = 2000


@dataclass(frozen=True)
class Bounds:
    """Soft targets b_i of μNAS's objective; a bound left as None drops that objective."""

    error: float | None = None
    peak_sram_bytes: int | None = None
    flash_bytes: int | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        for name, value in zip(OBJECTIVES, self.as_tuple(), strict=True):
            if value is not None and not value > 0:
                raise ValueError(f"bound {name} must be positive, got {value}")

    def as_tuple(self) -> tuple[float | None, ...]:
        """Bounds in the order of ``OBJECTIVES``."""
        return (self.error, self.peak_sram_bytes, self.flash_bytes, self.macs)

    def to_json(self) -> dict[str, Any]:
        return dict(zip(OBJECTIVES, self.as_tuple(), strict=True))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Bounds:
        return cls(**{name: data.get(name) for name in OBJECTIVES})


@dataclass(frozen=True)
class Limits:
    """Hard feasibility limits of the target board; None means unconstrained (``macs``: per inference)."""

    sram_bytes: int | None = None
    flash_bytes: int | None = None
    latency_ms: float | None = None
    core: str | None = None
    clock_mhz: float | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        if self.macs is not None and self.macs < 1:
            raise ValueError(f"the MACs limit must be at least 1, got {self.macs}")
        if self.latency_ms is not None and (self.core is None or self.clock_mhz is None):
            raise ValueError("a latency limit needs core and clock_mhz")
        if self.core is not None and self.core not in CORES:
            raise ValueError(f"unknown core {self.core!r}; known: {', '.join(CORES)}")

    def estimate_latency_ms(self, graph: OpGraph) -> float | None:
        """Latency on this board by the calibrated instruction model, or None without core or clock."""
        if self.core is None or self.clock_mhz is None:
            return None
        return latency_ms(graph, self.core, self.clock_mhz)

    def violations(self, resources: dict[str, Any]) -> list[str]:
        """Human-readable reasons why ``resources`` break these limits (empty when feasible)."""
        reasons = []
        if self.sram_bytes is not None and resources["peak_sram_bytes"] > self.sram_bytes:
            reasons.append(
                f"peak SRAM {resources['peak_sram_bytes']:,} B exceeds the limit {self.sram_bytes:,} B"
            )
        if self.flash_bytes is not None and resources["flash_bytes"] > self.flash_bytes:
            reasons.append(f"flash {resources['flash_bytes']:,} B exceeds the limit {self.flash_bytes:,} B")
        if self.macs is not None and resources["macs"] > self.macs:
            reasons.append(f"{resources['macs']:,} MACs exceed the limit {self.macs:,}")
        latency = resources.get("latency_ms")
        if self.latency_ms is not None and latency is not None and latency > self.latency_ms:
            limit = self.latency_ms
            reasons.append(f"latency {latency:.2f} ms (calibrated model) exceeds the limit {limit:g} ms")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        return cls(**data)


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs besides the evaluator; ``fidelity`` is passed through untouched."""

    space: SpaceConfig
    budget: int
    bounds: Bounds = field(default_factory=Bounds)
    limits: Limits = field(default_factory=Limits)
    strategy: StrategyName = "aging_evolution"
    population: int = 100
    sample_size: int = 25
    seed: int = 0
    lambda_floor: float = 0.05
    cap: float = 10.0
    max_retries: int = 50
    max_random_tries: int = 500
    fidelity: dict[str, Any] = field(default_factory=dict)
    # Settings only one strategy reads (MemNAS: lambda, beta, top_k...), validated by that strategy.
    strategy_options: dict[str, Any] = field(default_factory=dict)
    # μNAS's sparsity gene: (low, high) of the DPF target sparsity drawn per candidate, or None
    # (no pruning).  Feasibility is judged on the unpruned architecture, an upper bound.
    sparsity: tuple[float, float] | None = None
    # Multi-fidelity: rung k trains ``fidelity["epochs"] * asha_eta**k`` epochs in all; the top
    # 1/asha_eta of a rung are promoted, up to rung ``asha_max_rung``.
    fidelity_schedule: FidelitySchedule = "off"
    asha_eta: int = 3
    asha_max_rung: int = 2
    error_objective: ErrorObjective = "float"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.strategy == "aging_evolution" and all(b is None for b in self.bounds.as_tuple()):
            raise ValueError("aging evolution needs at least one bound to build its objective")
        if self.strategy == "memnas":
            MemNASConfig.from_json(self.strategy_options)  # raises ValueError on bad options
        for name in ("population", "sample_size", "max_retries", "max_random_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.budget < 0:
            raise ValueError("budget must not be negative")
        if not 0 < self.lambda_floor <= 1:
            raise ValueError("lambda_floor must lie in (0, 1]")
        if not self.cap > 0:
            raise ValueError("cap must be positive")
        self._check_fidelity_schedule()
        if self.error_objective not in ERROR_OBJECTIVES:
            raise ValueError(
                f"unknown error objective {self.error_objective!r}; known: {', '.join(ERROR_OBJECTIVES)}"
            )
        if self.sparsity is not None:
            low, high = self.sparsity
            if not 0.0 <= low <= high <= MAX_SPARSITY:
                raise ValueError(f"sparsity range must satisfy 0 <= low <= high <= {MAX_SPARSITY}")

    def _check_fidelity_schedule(self) -> None:
        if self.fidelity_schedule not in FIDELITY_SCHEDULES:
            known = ", ".join(FIDELITY_SCHEDULES)
            raise ValueError(f"unknown fidelity schedule {self.fidelity_schedule!r}; known: {known}")
        if not 2 <= self.asha_eta <= ASHA_MAX_ETA:
            raise ValueError(f"ASHA's eta must be an integer from 2 to {ASHA_MAX_ETA}, got {self.asha_eta}")
        if not 1 <= self.asha_max_rung <= ASHA_MAX_RUNG:
            raise ValueError(
                f"ASHA's max rung must be an integer from 1 to {ASHA_MAX_RUNG}, got {self.asha_max_rung}"
            )
        epochs, eta, rung = self.fidelity.get("epochs"), self.asha_eta, self.asha_max_rung
        if self.asha and isinstance(epochs, int) and epochs * eta**rung > ASHA_MAX_EPOCHS:
            raise ValueError(
                f"ASHA's top rung would train {epochs} x {eta}^{rung} = {epochs * eta**rung:,} epochs "
                f"per candidate; at most {ASHA_MAX_EPOCHS:,}: lower the epochs, eta or max rung"
            )

    @property
    def asha(self) -> bool:
        """True when candidates are trained in ASHA rungs."""
        return self.fidelity_schedule == "asha"

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data.update(space=self.space.to_json(), bounds=self.bounds.to_json(), limits=self.limits.to_json())
        data["fidelity"] = dict(self.fidelity)
        data["strategy_options"] = dict(self.strategy_options)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        return cls(
            **{
                **data,
                "space": SpaceConfig.from_json(data["space"]),
                "bounds": Bounds.from_json(data.get("bounds", {})),
                "limits": Limits.from_json(data.get("limits", {})),
                "sparsity": None if data.get("sparsity") is None else tuple(data["sparsity"]),
            }
        )
