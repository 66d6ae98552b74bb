"""Search strategies: μNAS's aging evolution and a random baseline, ask/tell and resumable.

Both strategies are steady-state and asynchronous: ``ask()`` hands out a proposal (many may
be outstanding while workers train them), ``tell()`` feeds back its result in any order.

Decisions worth knowing:

- *Budget* counts evaluations, i.e. feasible proposals handed out by ``ask()`` (a failed
  training still counts).  Once ``budget`` have been asked, ``ask()`` returns None;
  ``is_done()`` becomes true when every one of them has been told.
- *Hard limits* (SRAM, flash, MACs, latency predicted by the calibrated instruction model) are
  checked analytically before any training.  An infeasible mutated child is returned by
  ``ask()`` as a *rejected* proposal (``reject_reason`` set, no ``tell`` expected, not counted
  in the budget) so the user sees why.  After ``max_retries`` consecutive unsuccessful
  mutations the strategy falls back to a random feasible architecture; random draws that
  break the limits are skipped silently and counted, and after ``max_random_tries`` of them
  in a row the search stops with a reason.
- *Duplicates* (an architecture already proposed, evaluated or rejected) are skipped and
  counted: retraining the same network spends budget on noise, not on search.  Mutations the
  space cannot repair are skipped the same way (there is no child to show).
- *Warm-up*: while told members plus outstanding random proposals are fewer than
  ``population``, ``ask()`` proposes random architectures; afterwards each told child joins
  the population and the oldest member leaves.  Parent selection only sees told members.
- *Multi-fidelity* (``fidelity_schedule="asha"``, :mod:`.asha`): ``ask()`` first offers a
  *promotion* when one is due (a proposal with the candidate's own id, ``rung`` > 0 and the
  weights to continue from; not counted in the budget), else a new rung-0 candidate.  Its
  ``tell()`` updates the member in place: the member keeps its id, its age (``born``) and its
  place in the population (one that has aged out stays out), and from then on every decision
  (parent selection, the Pareto archive, later promotions from the higher rung) sees its
  highest-rung result; the metrics it does not replace (a pruned candidate's measured
  resources) carry over.  A failed promotion leaves the member as it was.  The search is done
  once the budget's candidates are told and no promotion is due.
- *Error objective*: ``error_objective="int8"`` makes the first objective the int8 model's
  validation error (``metrics["int8_val_accuracy"]``; a candidate that could not be quantised
  counts as error 1, it cannot be deployed); "float" uses the float model's.
- The state (RNG included) serialises to plain JSON; saving and loading at any point gives
  exactly the proposals an uninterrupted run would.  Full history is *not* kept in the state
  (callers store records through events); the population, the Pareto archive, outstanding
  proposals and hashes of every architecture seen are.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from searches.engine.resources.report import analyze
from searches.engine.space import arch as A
from searches.engine.space.arch import Architecture
from searches.engine.space.sampling import random_architecture
from searches.engine.space.sparsity import random_sparsity
from searches.engine.strategies.asha import Rungs
from searches.engine.strategies.config import ErrorObjective, Limits, SearchConfig, StrategyName
from searches.engine.strategies.objectives import dominates, pareto_front

STATE_FORMAT = "nasweb.search-state"
STATE_VERSION = 1
# Which ``Architecture.key`` the hashes in a saved state's ``seen`` come from.  States written
# before the canonical key get the canonical hashes of every architecture they still hold
# added on load (rejected ones are lost: at worst one of them is proposed again).
KEY_VERSION = 2


Origin = Literal["random", "mutation"]


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
    # ASHA: the rung this proposal trains to; a promotion (rung > 0) continues from these weights.
    rung: int = 0
    resume_weights: str | None = None

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
            "rung": self.rung,
            "resume_weights": self.resume_weights,
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
    def rung(self) -> int:
        """The ASHA rung of its result (0 without multi-fidelity)."""
        return int(self.result.metrics.get("rung", 0))

    @property
    def resources(self) -> dict[str, Any]:
        """Its resources: a pruned candidate's measured ones, else the proposal's."""
        return self.result.metrics.get("resources") or self.proposal.resources

    def accuracy(self, error_objective: ErrorObjective = "float") -> float:
        """Validation accuracy of the float model, or of the int8 model (0 when it could not be quantised)."""
        if error_objective == "int8":
            return float(self.result.metrics.get("int8_val_accuracy") or 0.0)
        return self.result.val_accuracy

    def objectives_for(self, error_objective: ErrorObjective) -> tuple[float, ...]:
        """(val error, peak SRAM, flash, MACs), all minimised, with the float or the int8 error."""
        r = self.resources
        return (1.0 - self.accuracy(error_objective), r["peak_sram_bytes"], r["flash_bytes"], r["macs"])

    @property
    def objectives(self) -> tuple[float, ...]:
        """(float val error, peak SRAM, flash, MACs), all minimised; a pruned candidate's measured ones."""
        return self.objectives_for("float")

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
    latency = limits.estimate_latency_ms(report.graph)
    if latency is not None:
        resources["latency_ms"] = latency
    return resources


# ---- strategies ---------------------------------------------------------------------------------


def arch_hash(architecture: Architecture) -> str:
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
        # ASHA only: the rungs, and every evaluated member with its highest-rung result (a
        # promotion may pick a member that has left the population and the archive).
        self._rungs: Rungs | None = Rungs(config.asha_eta, config.asha_max_rung) if config.asha else None
        self._members: dict[int, Member] = {}
        self.counters: dict[str, int] = {
            "rejected": 0,
            "random_rejected": 0,
            "invalid": 0,
            "duplicates": 0,
            "failed": 0,
        }
        if config.asha:
            self.counters.update(promotions=0, promotions_failed=0)

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

    @property
    def rungs(self) -> Rungs | None:
        """ASHA's rungs (None without multi-fidelity)."""
        return self._rungs

    def objectives(self, member: Member) -> tuple[float, ...]:
        """The member's objectives under this search's error objective."""
        return member.objectives_for(self.config.error_objective)

    def is_done(self) -> bool:
        """True once the budget (or an early stop) is reached, every evaluation told and no promotion due."""
        exhausted = self._asked >= self.config.budget or self._stop_reason is not None
        if self._rungs is not None and self._rungs.next_promotion() is not None:
            return False
        return exhausted and not self._outstanding

    def ask(self) -> Proposal | None:
        """The next proposal (possibly a rejected one: record it and ask again), or None when exhausted.

        With ASHA a due promotion comes first; it is outstanding like any proposal.
        """
        promotion = self._promote()
        if promotion is not None:
            self._outstanding[promotion.id] = promotion
            return promotion
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
        if proposal.rung > 0:
            return self._tell_promotion(proposal, result)
        self._told += 1
        if isinstance(result, EvalFailure):
            self.counters["failed"] += 1
            return None
        member = Member(proposal, result, born=self._told)
        self._admit(member)
        self._add_to_archive(member)
        if self._rungs is not None:
            self._members[member.id] = member
            self._rungs.record(0, member.id, self.objectives(member))
        return member

    # ---- multi-fidelity ----

    def _promote(self) -> Proposal | None:
        """The due promotion as a proposal (marked promoted), or None."""
        if self._rungs is None:
            return None
        due = self._rungs.next_promotion()
        if due is None:
            return None
        candidate_id, from_rung = due
        self._rungs.mark_promoted(candidate_id, from_rung)
        member = self._members[candidate_id]
        trained = member.result.metrics.get("architecture")
        return Proposal(
            candidate_id,
            # A candidate pruned while training continues as the network it became, unpruned further.
            A.from_json(trained) if trained is not None else member.architecture,
            member.proposal.origin,
            f"promoted to rung {from_rung + 1}",
            dict(member.resources),
            parent_id=member.proposal.parent_id,
            rung=from_rung + 1,
            resume_weights=member.result.metrics.get("weights"),
        )

    def _tell_promotion(self, proposal: Proposal, result: EvalResult | EvalFailure) -> Member | None:
        assert self._rungs is not None
        old = self._members[proposal.id]
        if isinstance(result, EvalFailure):
            self.counters["promotions_failed"] += 1
            return None
        self.counters["promotions"] += 1
        metrics = {**old.result.metrics, **result.metrics, "rung": proposal.rung}
        better = EvalResult(result.val_accuracy, result.test_accuracy, metrics)
        member = Member(old.proposal, better, old.born)
        self._members[member.id] = member
        self._rungs.record(proposal.rung, member.id, self.objectives(member))
        self._population = [member if m.id == member.id else m for m in self._population]
        # Its error may have gone up as well as down: rebuild the front from every member.
        members = sorted(self._members.values(), key=lambda m: m.born)
        front = pareto_front([self.objectives(m) for m in members])
        self._archive = [members[i] for i in front]
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
            candidate = random_architecture(self._rng, self.config.space)
            key = arch_hash(candidate)
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
        point = self.objectives(member)
        if any(dominates(self.objectives(other), point) for other in self._archive):
            return
        self._archive = [m for m in self._archive if not dominates(point, self.objectives(m))] + [member]

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
            "key_version": KEY_VERSION,
            "rungs": None if self._rungs is None else self._rungs.to_json(),
            "members": [m.to_json() for m in sorted(self._members.values(), key=lambda m: m.born)],
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
        if data.get("rungs") is not None:
            self._rungs = Rungs.from_json(data["rungs"])
        self._members = {m.id: m for m in map(Member.from_json, data.get("members", []))}
        if data.get("key_version") != KEY_VERSION:
            self._seen.update(arch_hash(a) for a in self._held_architectures())

    def _held_architectures(self) -> list[Architecture]:
        """Every architecture the state still holds (outstanding, population, archive)."""
        held = [p.architecture for p in self._outstanding.values()]
        members = (*self._population, *self._archive, *self._members.values())
        return held + [m.architecture for m in members]
