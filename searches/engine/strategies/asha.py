"""ASHA's rungs (Li et al., MLSys 2020): which trained candidate to promote to more training, and when.

Rung k trains a candidate for ``base_epochs * eta**k`` epochs in all; rung 0 is the run's own
fidelity.  Asynchronously, whenever a worker is free: promote a candidate from the highest rung
where one is among the top ``len(rung) // eta`` of that rung's completed results and not yet
promoted, else start a new candidate at rung 0.  Nothing waits for a rung to fill.

Decisions worth knowing:

- *Ranking within a rung* is multi-objective: candidates are ordered by non-dominated sorting
  of their objectives at that rung (validation error, peak SRAM, flash, MACs), then by error,
  then by completion order.  Ranking by error alone would only ever promote the largest
  networks; this promotes the best-trained candidates of every part of the Pareto front first,
  which is what the run's front is made of.
- Each rung is ranked on its own results: a candidate's rung-0 record stays as it was when it
  is promoted (so later rung-0 arrivals are compared with like).
- A promoted candidate counts as promoted from the moment it is handed out, so it is never
  promoted twice, whether its training succeeds, fails or is lost.
- The resource is epochs: a promotion continues from the candidate's weights for the
  difference (a warm restart of the learning-rate schedule over the extra epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from searches.engine.strategies.objectives import pareto_ranks

Objectives = tuple[float, ...]


def rung_epochs(base_epochs: int, eta: int, rung: int) -> int:
    """Epochs a candidate has been trained for in all once it completes ``rung``."""
    return base_epochs * eta**rung


def promotion_order(results: list[tuple[int, Objectives]]) -> list[int]:
    """Candidate ids of one rung, best first: Pareto rank, then error, then completion order."""
    ranks = pareto_ranks([objectives for _, objectives in results])
    order = sorted(range(len(results)), key=lambda i: (ranks[i], results[i][1][0], i))
    return [results[i][0] for i in order]


@dataclass
class Rungs:
    """Completed results per rung and the candidates already promoted out of each rung."""

    eta: int
    max_rung: int
    # results[k]: (candidate id, objectives at rung k) in completion order, for k = 0..max_rung.
    results: list[list[tuple[int, Objectives]]] = field(default_factory=list)
    # promoted[k]: ids handed out for rung k + 1, for k = 0..max_rung - 1.
    promoted: list[set[int]] = field(default_factory=list)
    # promotion_order() of each rung, until its next result: ask() and is_done() look often.
    _order: dict[int, list[int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.results = self.results or [[] for _ in range(self.max_rung + 1)]
        self.promoted = self.promoted or [set() for _ in range(self.max_rung)]

    def record(self, rung: int, candidate_id: int, objectives: Objectives) -> None:
        """A candidate completed ``rung`` with these objectives."""
        self.results[rung].append((candidate_id, tuple(objectives)))
        self._order.pop(rung, None)

    def ranked(self, rung: int) -> list[int]:
        """The rung's candidate ids, best first (see :func:`promotion_order`)."""
        if rung not in self._order:
            self._order[rung] = promotion_order(self.results[rung])
        return self._order[rung]

    def next_promotion(self) -> tuple[int, int] | None:
        """(candidate id, rung it is promoted from) of the next promotion, highest rung first, or None."""
        for rung in range(self.max_rung - 1, -1, -1):
            results = self.results[rung]
            quota = len(results) // self.eta
            if quota == 0:
                continue
            for candidate_id in self.ranked(rung)[:quota]:
                if candidate_id not in self.promoted[rung]:
                    return candidate_id, rung
        return None

    def mark_promoted(self, candidate_id: int, from_rung: int) -> None:
        self.promoted[from_rung].add(candidate_id)

    def counts(self) -> list[int]:
        """Completed results per rung."""
        return [len(r) for r in self.results]

    def to_json(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "max_rung": self.max_rung,
            "results": [[[i, list(o)] for i, o in rung] for rung in self.results],
            # Sorted: set order is not part of the state.
            "promoted": [sorted(ids) for ids in self.promoted],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rungs:
        return cls(
            eta=data["eta"],
            max_rung=data["max_rung"],
            results=[[(i, tuple(o)) for i, o in rung] for rung in data["results"]],
            promoted=[set(ids) for ids in data["promoted"]],
        )
