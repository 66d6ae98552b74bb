"""μNAS's asynchronous aging evolution (Real et al.) with the randomly weighted objective."""

from __future__ import annotations

import math

from searches.engine.space.morphisms import mutate
from searches.engine.space.sparsity import mutate_sparsity
from searches.engine.strategies.base import Member, Proposal, SearchStrategy, arch_hash, measure
from searches.engine.strategies.config import StrategyName
from searches.engine.strategies.objectives import draw_lambdas, fitness


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
        mutation = mutate(parent.architecture, self._rng, self.config.space)
        self._streak += 1
        if mutation.child is None:
            self.counters["invalid"] += 1
            return None
        key = arch_hash(mutation.child)
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
            value = fitness(self.objectives(member), self.config.bounds, lambdas, self.config.cap)
            if best is None or value > best_fitness:
                best, best_fitness = member, value
        assert best is not None
        return best

    def _admit(self, member: Member) -> None:
        self._population.append(member)
        if len(self._population) > self.config.population:
            self._population.pop(0)  # aging: the oldest leaves, however fit
