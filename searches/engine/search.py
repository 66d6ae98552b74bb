"""Search strategies: μNAS's aging evolution and a random baseline, ask/tell and resumable.

Both strategies are steady-state and asynchronous: ``ask()`` hands out a proposal (many may
be outstanding while workers train them), ``tell()`` feeds back its result in any order.

Decisions worth knowing:

- *Budget* counts evaluations, i.e. feasible proposals handed out by ``ask()`` (a failed
  training still counts).  Once ``budget`` have been asked, ``ask()`` returns None;
  ``is_done()`` becomes true when every one of them has been told.
- *Hard limits* (SRAM, flash, estimated latency) are checked analytically before any
  training.  An infeasible mutated child is returned by ``ask()`` as a *rejected* proposal
  (``reject_reason`` set, no ``tell`` expected, not counted in the budget) so the user sees
  why.  After ``max_retries`` consecutive unsuccessful mutations the strategy falls back to a
  random feasible architecture; random draws that break the limits are skipped silently and
  counted, and after ``max_random_tries`` of them in a row the search stops with a reason.
- *Duplicates* (an architecture already proposed, evaluated or rejected) are skipped and
  counted: retraining the same network spends budget on noise, not on search.  Mutations the
  space cannot repair are skipped the same way (there is no child to show).
- *Warm-up*: while told members plus outstanding random proposals are fewer than
  ``population``, ``ask()`` proposes random architectures; afterwards each told child joins
  the population and the oldest member leaves.  Parent selection only sees told members.
- The state (RNG included) serialises to plain JSON; saving and loading at any point gives
  exactly the proposals an uninterrupted run would.  Full history is *not* kept in the state
  (callers store records through events); the population, the Pareto archive, outstanding
  proposals and hashes of every architecture seen are.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from searches.engine import arch as A
from searches.engine import space
from searches.engine.arch import Architecture
from searches.engine.resources import CORES, analyze, latency_ms

MAX_SPARSITY = 0.95
SPARSITY_SIGMA = 0.05  # μNAS mutates the sparsity gene by N(0, 0.05)
STATE_FORMAT = "nasweb.search-state"
STATE_VERSION = 1
OBJECTIVES: tuple[str, ...] = ("error", "peak_sram_bytes", "flash_bytes", "macs")
STRATEGIES: tuple[str, ...] = ("aging_evolution", "random", "memnas")

StrategyName = Literal["aging_evolution", "random", "memnas"]
Origin = Literal["random", "mutation"]


# ---- configuration ------------------------------------------------------------------------


def mutate_sparsity(rng: random.Random, s: float, low: float, high: float) -> float:
    """μNAS's sparsity gene mutation: ``s`` + N(0, 0.05), clipped to ``[low, high]``."""
    if not 0.0 <= low <= high <= MAX_SPARSITY:
        raise ValueError(f"need 0 <= low <= high <= {MAX_SPARSITY}")
    return min(high, max(low, s + rng.gauss(0.0, SPARSITY_SIGMA)))


def random_sparsity(rng: random.Random, low: float, high: float) -> float:
    """A fresh sparsity gene for a random architecture, uniform in ``[low, high]``."""
    if not 0.0 <= low <= high <= MAX_SPARSITY:
        raise ValueError(f"need 0 <= low <= high <= {MAX_SPARSITY}")
    return rng.uniform(low, high)


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
    """Hard feasibility limits of the target board; None means unconstrained."""

    sram_bytes: int | None = None
    flash_bytes: int | None = None
    latency_ms: float | None = None
    core: str | None = None
    clock_mhz: float | None = None

    def __post_init__(self) -> None:
        if self.latency_ms is not None and (self.core is None or self.clock_mhz is None):
            raise ValueError("a latency limit needs core and clock_mhz")
        if self.core is not None and self.core not in CORES:
            raise ValueError(f"unknown core {self.core!r}; known: {', '.join(CORES)}")

    def estimate_latency_ms(self, macs: int) -> float | None:
        """Estimated latency on this board, or None when the core or clock is unknown."""
        if self.core is None or self.clock_mhz is None:
            return None
        return latency_ms(macs, self.core, self.clock_mhz)

    def violations(self, resources: dict[str, Any]) -> list[str]:
        """Human-readable reasons why ``resources`` break these limits (empty when feasible)."""
        reasons = []
        if self.sram_bytes is not None and resources["peak_sram_bytes"] > self.sram_bytes:
            reasons.append(
                f"peak SRAM {resources['peak_sram_bytes']:,} B exceeds the limit {self.sram_bytes:,} B"
            )
        if self.flash_bytes is not None and resources["flash_bytes"] > self.flash_bytes:
            reasons.append(f"flash {resources['flash_bytes']:,} B exceeds the limit {self.flash_bytes:,} B")
        latency = resources.get("latency_ms")
        if self.latency_ms is not None and latency is not None and latency > self.latency_ms:
            reasons.append(f"estimated latency {latency:.2f} ms exceeds the limit {self.latency_ms:g} ms")
        return reasons

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        return cls(**data)


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs besides the evaluator; ``fidelity`` is passed through untouched."""

    space: space.SpaceConfig
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

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.strategy == "aging_evolution" and all(b is None for b in self.bounds.as_tuple()):
            raise ValueError("aging evolution needs at least one bound to build its objective")
        if self.strategy == "memnas":
            from searches.engine.memnas import MemNASConfig  # local: memnas builds on this module

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
        if self.sparsity is not None:
            low, high = self.sparsity
            if not 0.0 <= low <= high <= MAX_SPARSITY:
                raise ValueError(f"sparsity range must satisfy 0 <= low <= high <= {MAX_SPARSITY}")

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
                "space": space.SpaceConfig.from_json(data["space"]),
                "bounds": Bounds.from_json(data.get("bounds", {})),
                "limits": Limits.from_json(data.get("limits", {})),
                "sparsity": None if data.get("sparsity") is None else tuple(data["sparsity"]),
            }
        )


# ---- proposals, results, members ------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """A candidate handed out by ``ask()``: pending evaluation, or rejected with a reason."""

    id: int
    architecture: Architecture
    origin: Origin
    description: str
    resources: dict[str, Any]
    parent_id: int | None = None
    reject_reason: str | None = None
    sparsity: float | None = None  # DPF target for this candidate when the search prunes

    @property
    def rejected(self) -> bool:
        return self.reject_reason is not None

    @property
    def status(self) -> str:
        return "rejected" if self.rejected else "pending"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "architecture": self.architecture.to_json(),
            "origin": self.origin,
            "description": self.description,
            "resources": dict(self.resources),
            "parent_id": self.parent_id,
            "reject_reason": self.reject_reason,
            "sparsity": self.sparsity,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proposal:
        return cls(**{**data, "architecture": A.from_json(data["architecture"])})


@dataclass(frozen=True)
class EvalResult:
    """A finished evaluation; ``metrics`` holds any further JSON-able numbers (loss, seconds...)."""

    val_accuracy: float
    test_accuracy: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalResult:
        return cls(**data)


@dataclass(frozen=True)
class EvalFailure:
    """An evaluation that could not finish (training crashed, worker lost...)."""

    reason: str


@dataclass(frozen=True)
class Member:
    """A told, successfully evaluated candidate; ``born`` is its tell sequence number (its age)."""

    proposal: Proposal
    result: EvalResult
    born: int

    @property
    def id(self) -> int:
        return self.proposal.id

    @property
    def architecture(self) -> Architecture:
        return self.proposal.architecture

    @property
    def objectives(self) -> tuple[float, ...]:
        """(val error, peak SRAM, flash, MACs), all minimised; a pruned candidate's measured ones."""
        r = self.result.metrics.get("resources") or self.proposal.resources
        return (1.0 - self.result.val_accuracy, r["peak_sram_bytes"], r["flash_bytes"], r["macs"])

    def to_json(self) -> dict[str, Any]:
        return {"proposal": self.proposal.to_json(), "result": self.result.to_json(), "born": self.born}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(Proposal.from_json(data["proposal"]), EvalResult.from_json(data["result"]), data["born"])


def measure(architecture: Architecture, limits: Limits) -> dict[str, Any]:
    """The analytic resources of ``architecture`` as a JSON-able dict (latency when the board is known)."""
    report = analyze(architecture)
    resources: dict[str, Any] = {
        "peak_sram_bytes": report.peak_sram_bytes,
        "flash_bytes": report.flash_bytes,
        "macs": report.macs,
        "params": report.params,
    }
    latency = limits.estimate_latency_ms(report.macs)
    if latency is not None:
        resources["latency_ms"] = latency
    return resources


# ---- objective and Pareto front -------------------------------------------------------------


def draw_lambdas(rng: random.Random, floor: float) -> tuple[float, ...]:
    """One λ per objective, U(0, 1) floored; always four draws so RNG use is independent of bounds."""
    return tuple(max(rng.random(), floor) for _ in OBJECTIVES)


def fitness(objectives: Sequence[float], bounds: Bounds, lambdas: Sequence[float], cap: float) -> float:
    """μNAS's scalarisation -max_i min(f_i / b_i, cap) / λ_i over bounded objectives (higher is better)."""
    terms = [
        min(f / b, cap) / lam
        for f, b, lam in zip(objectives, bounds.as_tuple(), lambdas, strict=True)
        if b is not None
    ]
    if not terms:
        raise ValueError("fitness needs at least one bound")
    return -max(terms)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``a`` is no worse than ``b`` everywhere and better somewhere (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points all stay."""
    # Sorted lexicographically, a point can only be dominated by one before it, and anything
    # that dominates it is dominated-or-equal by some front member already found.
    order = sorted(range(len(points)), key=lambda i: tuple(points[i]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)


# ---- strategies ---------------------------------------------------------------------------------


def _arch_hash(architecture: Architecture) -> str:
    # A 128-bit digest of the canonical key keeps the saved state small over thousands of candidates.
    return hashlib.sha256(architecture.key().encode()).hexdigest()[:32]


def _rng_to_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_from_json(data: list[Any]) -> random.Random:
    rng = random.Random()
    rng.setstate((data[0], tuple(data[1]), data[2]))
    return rng


class SearchStrategy:
    """Shared ask/tell bookkeeping; subclasses decide what to propose and who survives."""

    name: StrategyName

    def __init__(self, config: SearchConfig) -> None:
        if config.strategy != self.name:
            raise ValueError(f"config is for {config.strategy!r}, not {self.name!r}")
        self.config = config
        self._rng = random.Random(config.seed)
        self._next_id = 0
        self._asked = 0
        self._told = 0
        self._streak = 0
        self._stop_reason: str | None = None
        self._outstanding: dict[int, Proposal] = {}
        self._population: list[Member] = []
        self._archive: list[Member] = []
        self._seen: set[str] = set()
        self.counters: dict[str, int] = {
            "rejected": 0,
            "random_rejected": 0,
            "invalid": 0,
            "duplicates": 0,
            "failed": 0,
        }

    # ---- public API ----

    @property
    def population(self) -> list[Member]:
        """Told members eligible as parents, oldest first."""
        return list(self._population)

    @property
    def archive(self) -> list[Member]:
        """Pareto-optimal evaluated candidates on (val error, peak SRAM, flash, MACs), oldest first."""
        return list(self._archive)

    @property
    def outstanding(self) -> list[Proposal]:
        """Proposals asked but not yet told, in ask order."""
        return list(self._outstanding.values())

    @property
    def asked(self) -> int:
        return self._asked

    @property
    def told(self) -> int:
        return self._told

    @property
    def stop_reason(self) -> str | None:
        """Why the search stopped early (no feasible architecture found), else None."""
        return self._stop_reason

    def is_done(self) -> bool:
        """True once the budget (or an early stop) is reached and every evaluation has been told."""
        exhausted = self._asked >= self.config.budget or self._stop_reason is not None
        return exhausted and not self._outstanding

    def ask(self) -> Proposal | None:
        """The next proposal (possibly a rejected one: record it and ask again), or None when exhausted."""
        if self._asked >= self.config.budget or self._stop_reason is not None:
            return None
        proposal = self._propose()
        if proposal is None or proposal.rejected:
            return proposal
        self._asked += 1
        self._outstanding[proposal.id] = proposal
        return proposal

    def tell(self, proposal_id: int, result: EvalResult | EvalFailure) -> Member | None:
        """Feed back an outstanding proposal's result; returns the new member, or None on failure."""
        proposal = self._outstanding.pop(proposal_id, None)
        if proposal is None:
            raise ValueError(f"proposal {proposal_id} is not outstanding")
        self._told += 1
        if isinstance(result, EvalFailure):
            self.counters["failed"] += 1
            return None
        member = Member(proposal, result, born=self._told)
        self._admit(member)
        self._add_to_archive(member)
        return member

    # ---- proposing ----

    def _propose(self) -> Proposal | None:
        raise NotImplementedError

    def _admit(self, member: Member) -> None:
        """Random search keeps no population."""

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _random_proposal(self, description: str) -> Proposal | None:
        """A fresh, feasible random architecture, or None (and a stop reason) after too many tries."""
        last_reason = ""
        for _ in range(self.config.max_random_tries):
            candidate = space.random_architecture(self._rng, self.config.space)
            key = _arch_hash(candidate)
            if key in self._seen:
                self.counters["duplicates"] += 1
                continue
            self._seen.add(key)
            resources = measure(candidate, self.config.limits)
            reasons = self.config.limits.violations(resources)
            if not reasons:
                self._streak = 0
                sparsity = None
                if self.config.sparsity is not None:
                    sparsity = random_sparsity(self._rng, *self.config.sparsity)
                    description = f"{description} · sparsity {sparsity:.2f}"
                return Proposal(
                    self._take_id(), candidate, "random", description, resources, sparsity=sparsity
                )
            self.counters["random_rejected"] += 1
            last_reason = "; ".join(reasons)
        tries = self.config.max_random_tries
        self._stop_reason = f"no new feasible architecture in {tries} random draws (last: {last_reason})"
        return None

    def _add_to_archive(self, member: Member) -> None:
        point = member.objectives
        if any(dominates(other.objectives, point) for other in self._archive):
            return
        self._archive = [m for m in self._archive if not dominates(point, m.objectives)] + [member]

    # ---- serialisation ----

    def state_to_json(self) -> dict[str, Any]:
        """The complete search state as plain JSON (json.dumps-able), RNG included."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "config": self.config.to_json(),
            "rng": _rng_to_json(self._rng),
            "next_id": self._next_id,
            "asked": self._asked,
            "told": self._told,
            "streak": self._streak,
            "stop_reason": self._stop_reason,
            "counters": dict(self.counters),
            "outstanding": [p.to_json() for p in self._outstanding.values()],
            "population": [m.to_json() for m in self._population],
            "archive": [m.to_json() for m in self._archive],
            # Sorted: set order follows string hashing, which changes between processes.
            "seen": sorted(self._seen),
        }

    def _load_state(self, data: dict[str, Any]) -> None:
        self._rng = _rng_from_json(data["rng"])
        self._next_id = data["next_id"]
        self._asked = data["asked"]
        self._told = data["told"]
        self._streak = data["streak"]
        self._stop_reason = data["stop_reason"]
        self.counters = dict(data["counters"])
        self._outstanding = {p["id"]: Proposal.from_json(p) for p in data["outstanding"]}
        self._population = [Member.from_json(m) for m in data["population"]]
        self._archive = [Member.from_json(m) for m in data["archive"]]
        self._seen = set(data["seen"])


class AgingEvolution(SearchStrategy):
    """μNAS's asynchronous aging evolution with its randomly weighted Chebyshev objective."""

    name: StrategyName = "aging_evolution"

    def _warming_up(self) -> bool:
        pending_random = sum(1 for p in self._outstanding.values() if p.origin == "random")
        return not self._population or len(self._population) + pending_random < self.config.population

    def _propose(self) -> Proposal | None:
        while not self._warming_up() and self._streak < self.config.max_retries:
            proposal = self._mutate_once()
            if proposal is not None:
                return proposal
        if self._warming_up():
            return self._random_proposal("random")
        return self._random_proposal(f"random (after {self.config.max_retries} unsuccessful mutations)")

    def _mutate_once(self) -> Proposal | None:
        """One selection + mutation: a proposal (feasible or rejected), or None for a silent skip."""
        parent = self.select_parent()
        mutation = space.mutate(parent.architecture, self._rng, self.config.space)
        self._streak += 1
        if mutation.child is None:
            self.counters["invalid"] += 1
            return None
        key = _arch_hash(mutation.child)
        if key in self._seen:
            self.counters["duplicates"] += 1
            return None
        self._seen.add(key)
        resources = measure(mutation.child, self.config.limits)
        reasons = self.config.limits.violations(resources)
        if reasons:
            self.counters["rejected"] += 1
        else:
            self._streak = 0
        description, sparsity = mutation.description, None
        if self.config.sparsity is not None:
            # μNAS mutates every child's gene: s + N(0, 0.05), clipped to the range.
            low, high = self.config.sparsity
            before = parent.proposal.sparsity if parent.proposal.sparsity is not None else low
            sparsity = mutate_sparsity(self._rng, before, low, high)
            description = f"{description} · sparsity {before:.2f}→{sparsity:.2f}"
        return Proposal(
            self._take_id(),
            mutation.child,
            "mutation",
            description,
            resources,
            parent_id=parent.id,
            reject_reason="; ".join(reasons) or None,
            sparsity=sparsity,
        )

    def select_parent(self) -> Member:
        """Tournament of ``sample_size`` members drawn with replacement under one shared λ draw."""
        if not self._population:
            raise RuntimeError("no told members to select a parent from")
        lambdas = draw_lambdas(self._rng, self.config.lambda_floor)
        best: Member | None = None
        best_fitness = -math.inf
        for _ in range(self.config.sample_size):
            member = self._rng.choice(self._population)
            value = fitness(member.objectives, self.config.bounds, lambdas, self.config.cap)
            if best is None or value > best_fitness:
                best, best_fitness = member, value
        assert best is not None
        return best

    def _admit(self, member: Member) -> None:
        self._population.append(member)
        if len(self._population) > self.config.population:
            self._population.pop(0)  # aging: the oldest leaves, however fit


class RandomSearch(SearchStrategy):
    """Baseline: every proposal is a fresh random feasible architecture."""

    name: StrategyName = "random"

    def _propose(self) -> Proposal | None:
        return self._random_proposal("random")


_CLASSES: dict[str, type[SearchStrategy]] = {"aging_evolution": AgingEvolution, "random": RandomSearch}


def make_strategy(config: SearchConfig) -> SearchStrategy:
    """A fresh strategy of the kind ``config.strategy`` names."""
    if config.strategy == "memnas":
        from searches.engine.memnas import MemNAS  # local: memnas builds on this module

        return MemNAS(config)
    return _CLASSES[config.strategy](config)


def from_state_json(data: dict[str, Any]) -> SearchStrategy:
    """Rebuild a strategy from ``state_to_json()`` output (after a JSON round trip)."""
    if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
        raise ValueError(f"not a {STATE_FORMAT} v{STATE_VERSION} document")
    strategy = make_strategy(SearchConfig.from_json(data["config"]))
    strategy._load_state(data)
    return strategy


# ---- sequential driver ------------------------------------------------------------------------------


EventKind = Literal["proposed", "rejected", "evaluated", "failed"]


@dataclass(frozen=True)
class SearchEvent:
    """What ``run_search`` reports: a proposal, and for finished evaluations its result and member."""

    kind: EventKind
    proposal: Proposal
    result: EvalResult | EvalFailure | None = None
    member: Member | None = None


def run_search(
    strategy: SearchStrategy,
    evaluate: Callable[[Architecture, Proposal], EvalResult],
    on_event: Callable[[SearchEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Member]:
    """Run ask → evaluate → tell in-process until done or told to stop; returns the Pareto archive."""
    emit = on_event or (lambda event: None)
    while not strategy.is_done() and not (should_stop is not None and should_stop()):
        proposal = strategy.ask()
        if proposal is None:
            break
        if proposal.rejected:
            emit(SearchEvent("rejected", proposal))
            continue
        emit(SearchEvent("proposed", proposal))
        result = _evaluate_safely(evaluate, proposal)
        member = strategy.tell(proposal.id, result)
        emit(SearchEvent("failed" if member is None else "evaluated", proposal, result, member))
    return strategy.archive


def _evaluate_safely(
    evaluate: Callable[[Architecture, Proposal], EvalResult], proposal: Proposal
) -> EvalResult | EvalFailure:
    # One candidate crashing (e.g. out of memory) must not end a long search; the failure is
    # recorded with its reason instead.
    try:
        return evaluate(proposal.architecture, proposal)
    except Exception as exc:
        return EvalFailure(f"{type(exc).__name__}: {exc}")
