"""MemNAS's grow-and-trim search (Liu et al., CVPR 2020) on μNAS's search space, ask/tell and resumable.

A search starts from a small *backbone* and proceeds in rounds.  Each round enumerates the
backbone's *grow* children (one new layer appended to every block, a new block, a new branch
beside the last block) and *trim* children (one layer, one branch block = one edge, or one
dense layer removed), drops the invalid ones and those already seen (as the same network),
reports the over-the-limits ones, lets a learned controller rank the rest and proposes the
top ``top_k`` for training.  Once they are
all told, each gets the memory-efficiency score relative to the backbone

    Y = λ·(a - a_b)/a_b + (1 - λ)·[β·(r_b - r)/r_b + (1 - β)·(p_b - p)/p_b]

(a validation accuracy, r peak SRAM, p flash; higher accuracy and lower memory are better)
and the best child becomes the next backbone.  The controller is then retrained on every
labelled candidate, ranking them by their scores relative to the *new* backbone, which is
exactly what the next round asks it to rank.

Decisions worth knowing:

- *Memory scale*: the paper divides each memory change by the backbone's own memory, so from a
  tiny seed every growth step costs as much as the whole network and Y prefers trimming;
  ``memory_scale="budget"`` divides by the board's SRAM and flash limits instead, so a growth
  step costs the share of the board it takes (accuracy gains are relative in both).

- *Seed*: the minimal backbone is one 3x3 conv (8 filters, batchnorm, ReLU) and global
  average pooling; ``seed_backbone="random"`` draws a random feasible architecture instead
  (and the minimal seed falls back to one when it breaks the limits).
- *Identical growth*: a grow layer is the same op, kernel and stride in every block, with a
  width rule (same, double or half the block's output channels) rather than one fixed filter
  count, so that growing deepens every block without forcing all blocks to one width.
- *No improvement*: when no child of a round scores Y > 0 the backbone stays and the next
  round proposes the next-ranked unseen children; after ``patience`` such rounds in a row
  the best-scoring child evaluated from this backbone becomes the backbone anyway, so the
  search cannot stall on a local optimum.  When a backbone has no new feasible child left,
  the search restarts from a random feasible architecture.
- *Limits*: children that break them are handed out by ``ask()`` as rejected proposals
  (with the reason, not counted in the budget), before the round's trained ones.
- *Rounds are barriers*: while a round's proposals are being trained ``ask()`` returns None
  (``is_done()`` stays false); a sequential driver never sees this, a parallel one simply
  waits for the next ``tell``.  Rounds never exceed the remaining budget.
- *Controller*: a GRU encodes each candidate's token sequence (one token per conv layer,
  then pooling, dense layers and a resource summary) and a linear head estimates its
  accuracy â.  Only the accuracy in Y is unknown before training, so candidates are ranked
  by Ŷ = Y with â in place of a, the memory terms exact.  It is trained online, warm-started,
  with a pairwise logistic ranking loss on Ŷ over all pairs of labelled candidates (the most
  recent ``history_limit``) ordered by their measured Y, plus a squared error keeping â an
  accuracy.  MemNAS's second GRU over the candidate list is left out, to keep a retrain
  well under a second on one CPU thread; candidates are scored independently.
- *Multi-fidelity* (ASHA): the controller decides which children are trained at all, the
  rungs how long.  Promotions run beside the rounds (a round waits only for its own
  proposals), and every MemNAS decision (Y, the backbone moves, the controller's labels) uses
  each candidate's rung-0 result, so a child is always compared with a backbone trained alike;
  the run's Pareto front and rows show the highest rung, as for the other strategies.
- The state, the controller's weights included (as plain float lists), serialises to JSON;
  a resumed search proposes exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.strategies.base import (
    EvalFailure,
    EvalResult,
    Member,
    Proposal,
    SearchStrategy,
    arch_hash,
    measure,
)
from searches.engine.strategies.config import Bounds, ErrorObjective, Limits, SearchConfig, StrategyName
from searches.engine.strategies.memnas.controller import Controller, ListController, encode
from searches.engine.strategies.memnas.edits import (
    children,
    function_hash,
    minimal_backbone,
    round0_combinations,
    single_block_networks,
)
from searches.engine.strategies.options import MemNASConfig

# With on_stall "raise_lambda", λ moves halfway to 1 at each local optimum until it passes this;
# from then on a local optimum moves to its best child.
LAMBDA_CEILING = 0.95

# ---- the memory-efficiency score --------------------------------------------------------------


def efficiency_score(
    accuracy: float,
    sram: float,
    flash: float,
    reference: tuple[float, float, float],
    lam: float,
    beta: float,
    scale: tuple[float, float] | None = None,
) -> float:
    """MemNAS's Y of (accuracy, peak SRAM, flash) relative to ``reference`` = the backbone's triple.

    The memory changes are divided by ``scale`` = (SRAM, flash) when given (the board's budget),
    else by the backbone's own memory as in the paper.
    """
    a_ref, r_ref, p_ref = reference
    r_scale, p_scale = scale if scale is not None else (r_ref, p_ref)
    # An accuracy of exactly 0 (a diverged backbone) would divide by zero; any gain is then huge.
    gain = (accuracy - a_ref) / max(a_ref, 1e-6)
    memory = beta * (r_ref - sram) / r_scale + (1 - beta) * (p_ref - flash) / p_scale
    return lam * gain + (1 - lam) * memory


def memory_scale(options: MemNASConfig, limits: Limits, bounds: Bounds) -> tuple[float, float] | None:
    """What Y divides memory changes by: None (the backbone's memory) or the board's budget.

    The budget is the search's SRAM and flash limits, else its bounds; without either the
    paper's formula is used.
    """
    if options.memory_scale == "backbone":
        return None
    sram = limits.sram_bytes or bounds.peak_sram_bytes
    flash = limits.flash_bytes or bounds.flash_bytes
    if sram is None or flash is None:
        return None
    return float(sram), float(flash)


def _keys(scores: dict[int, float]) -> dict[str, float]:
    """Scores by candidate id, with JSON's string keys."""
    return {str(k): v for k, v in scores.items()}


def _triple(member: Member, error_objective: ErrorObjective = "float") -> tuple[float, float, float]:
    r = member.proposal.resources
    return (member.accuracy(error_objective), float(r["peak_sram_bytes"]), float(r["flash_bytes"]))


# ---- the strategy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """A trained candidate the controller learns from: its architecture, accuracy and memory."""

    id: int
    architecture: list[Any]  # packed
    resources: dict[str, Any]
    accuracy: float
    group: int = -1  # the parent backbone's id: siblings form one list for the list ranker

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Labelled:
        return cls(**data)


@dataclass(frozen=True)
class _Queued:
    """A round's proposal not yet handed out (its id is taken when ``ask()`` returns it)."""

    architecture: Architecture
    description: str
    resources: dict[str, Any]
    reject_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": pack(self.architecture),
            "description": self.description,
            "resources": dict(self.resources),
            "reject_reason": self.reject_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Queued:
        return cls(**{**data, "architecture": unpack(data["architecture"])})


_LAYER_FIELDS = ("op", "kernel", "filters", "stride", "padding", "pre_pool", "batchnorm", "relu")


def pack(arch: Architecture) -> list[Any]:
    """A compact JSON form of ``arch`` for the saved state (a third of ``to_json``'s size)."""
    return [
        list(arch.input_shape),
        arch.classes,
        [
            [block.branch, [[getattr(layer, f) for f in _LAYER_FIELDS] for layer in block.layers]]
            for block in arch.conv_blocks
        ],
        None if arch.pooling is None else [arch.pooling.type, arch.pooling.size],
        [d.units for d in arch.dense],
    ]


def unpack(data: list[Any]) -> Architecture:
    """The inverse of :func:`pack` (no validation: the state only holds architectures it checked)."""
    shape, classes, blocks, pooling, dense = data
    return Architecture(
        (shape[0], shape[1], shape[2]),
        classes,
        tuple(ConvBlock(tuple(ConvLayer(*layer) for layer in layers), branch) for branch, layers in blocks),
        None if pooling is None else Pooling(*pooling),
        tuple(Dense(units) for units in dense),
    )


class MemNAS(SearchStrategy):
    """Grow-and-trim rounds from a backbone, children ranked by a learned controller, moves by Y."""

    name: StrategyName = "memnas"

    def __init__(self, config: SearchConfig) -> None:
        super().__init__(config)
        self.options = MemNASConfig.from_json(config.strategy_options)
        ranker = ListController if self.options.ranker == "list" else Controller
        self.controller: Controller = ranker(self.options.hidden, config.seed)
        self._queue: list[_Queued] = []
        self._round_active = False
        self._round: list[Member] = []  # this round's told members
        self._children: list[Member] = []  # every evaluated child of the current backbone
        self._history: list[Labelled] = []
        self._seed_id: int | None = None
        self._rounds = 0
        self._stall = 0
        self._restarts = 0
        self._round0 = False  # the current round is round 0 (no backbone yet)
        self._round0_done = False
        self._lam = self.options.lam  # the λ of Y now (raised at local optima with on_stall "raise_lambda")
        self.trajectory: list[dict[str, Any]] = []
        self._tokens: dict[int, list[list[float]]] = {}  # cache, rebuilt from history on demand

    # ---- public API ----

    @property
    def backbone(self) -> Member | None:
        """The current backbone (also the only member of ``population``), None before the seed is told."""
        return self._population[0] if self._population else None

    @property
    def rounds(self) -> int:
        """Completed rounds."""
        return self._rounds

    def tell(self, proposal_id: int, result: EvalResult | EvalFailure) -> Member | None:
        pending = self._outstanding.get(proposal_id)
        if pending is not None and pending.rung > 0:  # an ASHA promotion: see _tell_promotion
            return super().tell(proposal_id, result)
        member = super().tell(proposal_id, result)
        if member is not None:
            self._label(member)
        if proposal_id == self._seed_id:
            self._seed_id = None
            if member is not None:
                self._population = [member]
                self.trajectory.append({"round": self._rounds, "backbone": member.id, "why": "seed"})
            return member
        if member is not None:
            self._round.append(member)
        self._maybe_finish_round()
        return member

    # ---- proposing ----

    def _propose(self) -> Proposal | None:
        while True:
            if self._queue:
                return self._hand_out(self._queue.pop(0))
            if self._round_pending():
                return None  # the round (or the seed) is being evaluated
            self._maybe_finish_round()
            if self.backbone is None:
                wants_round0 = self.options.seed_backbone == "single_blocks" and not self._round0_done
                if wants_round0 and self._start_round0():
                    continue  # hand out round 0 from the queue
                return self._seed()
            if not self._start_round():
                # No new feasible child left around this backbone: start over from a random one.
                self.trajectory.append({"round": self._rounds, "restart": True})
                self._population, self._children, self._stall = [], [], 0
                self._restarts += 1

    def _hand_out(self, item: _Queued) -> Proposal:
        backbone = self.backbone
        return Proposal(
            self._take_id(),
            item.architecture,
            "mutation" if backbone is not None else "random",
            item.description,
            item.resources,
            parent_id=backbone.id if backbone is not None else None,
            reject_reason=item.reject_reason,
        )

    def _seed(self) -> Proposal | None:
        proposal = None
        if self.options.seed_backbone == "minimal" and not self._restarts:
            candidate = minimal_backbone(self.config.space)
            resources = measure(candidate, self.config.limits)
            if not self._is_seen(candidate) and not self.config.limits.violations(resources):
                proposal = Proposal(
                    self._take_id(), candidate, "random", "seed backbone (minimal)", resources
                )
        if proposal is None:
            what = "random restart" if self._restarts else "seed backbone (random)"
            proposal = self._random_proposal(what)
        if proposal is not None:
            self._mark_seen(proposal.architecture)
            self._seed_id = proposal.id
        return proposal

    def _start_round0(self) -> bool:
        """Queue round 0: the minimal network and a diverse set of two-layer single-block networks.

        MemNAS trains every single-cell network first and grows from the best; on μNAS's space
        the analogue is one block of two layers per pair of ops.  Its members are scored by Y
        against the cheapest network of the round, and the best becomes the first backbone.
        False when none is new and within the limits (then a single seed is used).
        """
        self._round0_done = True
        order = list(range(round0_combinations()))
        self._rng.shuffle(order)
        minimal = minimal_backbone(self.config.space)
        networks = [("round 0: minimal (conv3x3, 8 ch)", minimal)]
        networks += [
            (f"round 0: {what}", arch)
            for what, arch in single_block_networks(self.config.space, self.options.round0_size, order)
            if arch != minimal
        ]
        feasible: list[_Queued] = []
        for description, arch in networks:
            if self._is_seen(arch):
                continue
            self._mark_seen(arch)
            resources = measure(arch, self.config.limits)
            reasons = self.config.limits.violations(resources)
            item = _Queued(arch, description, resources, "; ".join(reasons) or None)
            if reasons:
                self.counters["rejected"] += 1
                self._queue.append(item)
            elif len(feasible) < min(self.options.round0_size, self.config.budget - self._asked):
                feasible.append(item)
        self._queue.extend(feasible)
        self._round0 = self._round_active = bool(feasible)
        return self._round0

    def _is_seen(self, arch: Architecture) -> bool:
        return arch_hash(arch) in self._seen or function_hash(arch) in self._seen

    def _mark_seen(self, arch: Architecture) -> None:
        self._seen.update((arch_hash(arch), function_hash(arch)))

    def _start_round(self) -> bool:
        """Queue the round's rejected and top-k feasible children; False when there are none."""
        backbone = self.backbone
        assert backbone is not None
        feasible: list[_Queued] = []
        for mutation in children(
            backbone.architecture, self.config.space, grow=self.options.grow, trim=self.options.trim
        ):
            assert mutation.child is not None
            if self._is_seen(mutation.child):
                continue
            resources = measure(mutation.child, self.config.limits)
            reasons = self.config.limits.violations(resources)
            item = _Queued(mutation.child, mutation.description, resources, "; ".join(reasons) or None)
            if reasons:
                self._mark_seen(mutation.child)
                self.counters["rejected"] += 1
                self._queue.append(item)
            else:
                feasible.append(item)
        k = min(self.options.top_k, self.config.budget - self._asked)
        weight, offsets = self._score_terms([q.resources for q in feasible])
        scores = self.controller.score(
            [encode(q.architecture, q.resources) for q in feasible], weight, offsets
        )
        ranked = sorted(range(len(feasible)), key=lambda i: -scores[i])[:k]
        for i in ranked:
            self._mark_seen(feasible[i].architecture)
            self._queue.append(feasible[i])
        self._round_active = bool(ranked)
        return bool(self._queue)

    # ---- finishing a round ----

    def _round_pending(self) -> bool:
        """A proposal of the round (or the seed) is out; ASHA promotions run beside rounds."""
        return any(p.rung == 0 for p in self._outstanding.values())

    def _tell_promotion(self, proposal: Proposal, result: EvalResult | EvalFailure) -> Member | None:
        """A promotion's result goes to the run's front and rungs, not to MemNAS's decisions.

        Y compares a child with its backbone, so both must be trained alike: the backbone, the
        round's children and the controller's labels keep their rung-0 results.
        """
        backbone = self._population
        member = super()._tell_promotion(proposal, result)
        self._population = backbone
        return member

    def _maybe_finish_round(self) -> None:
        budget_spent = self._asked >= self.config.budget
        if self._round_active and not self._round_pending() and (not self._queue or budget_spent):
            self._finish_round()

    def _finish_round(self) -> None:
        if self._round0:
            self._finish_round0()
            return
        backbone = self.backbone
        assert backbone is not None
        reference = self._triple(backbone)
        opts = self.options
        scores = {m.id: self._score(m, reference) for m in self._round}
        self._children.extend(self._round)
        best = max(self._round, key=lambda m: scores[m.id], default=None)
        why = None
        if best is not None and scores[best.id] > 0:
            why = "best Y > 0"
        else:
            self._stall += 1
            if self._stall >= opts.patience and self._children:
                # A local optimum of Y.  With "raise_lambda" accuracy weighs more from now on and
                # the children already trained are scored again at the new λ: the best moves on
                # only if it now beats the backbone (the next trade-off of the front).
                raise_lambda = opts.on_stall == "raise_lambda" and self._lam < LAMBDA_CEILING
                if raise_lambda:
                    self._lam += (1 - self._lam) / 2
                ys = {m.id: self._score(m, reference) for m in self._children}
                best = max(self._children, key=lambda m: ys[m.id])
                why = f"no Y > 0 in {self._stall} rounds: best child taken"
                if raise_lambda:
                    why = f"no Y > 0 in {self._stall} rounds: λ raised to {self._lam:g}"
                    self._stall = 0
                    if ys[best.id] > 0:
                        why += ", best child taken"
                    else:
                        best = None  # the backbone stays; the next round is scored at the new λ
        entry: dict[str, Any] = {"round": self._rounds + 1, "scores": _keys(scores)}
        if opts.on_stall == "raise_lambda":
            entry["lambda"] = self._lam
        if why is not None:
            entry["why"] = why
        if why is not None and best is not None:
            self._population = [best]
            self._children = []
            self._stall = 0
            entry["backbone"] = best.id
        self.trajectory.append(entry)
        self._round = []
        self._round_active = False
        self._rounds += 1
        self._retrain()

    def _finish_round0(self) -> None:
        """The best of round 0 by Y against the round's cheapest network becomes the backbone."""
        self._round0 = self._round_active = False
        members, self._round = self._round, []
        entry: dict[str, Any] = {"round": 0}
        if members:
            beta = self.options.beta

            def memory(m: Member) -> float:
                _, r, p = self._triple(m)
                return beta * r + (1 - beta) * p

            reference = self._triple(min(members, key=memory))
            scores = {m.id: self._score(m, reference) for m in members}
            best = max(members, key=lambda m: scores[m.id])
            self._population = [best]
            entry.update(
                scores={str(k): v for k, v in scores.items()},
                backbone=best.id,
                why=f"round 0: best Y of {len(members)} single-block networks",
            )
        self.trajectory.append(entry)
        self._retrain()

    def _triple(self, member: Member) -> tuple[float, float, float]:
        """(accuracy under the search's error objective, peak SRAM, flash) of a member."""
        return _triple(member, self.config.error_objective)

    def _score(self, member: Member, reference: tuple[float, float, float]) -> float:
        """MemNAS's Y of a member relative to ``reference``."""
        return efficiency_score(
            *self._triple(member), reference, self._lam, self.options.beta, self._memory_scale()
        )

    def _memory_scale(self) -> tuple[float, float] | None:
        return memory_scale(self.options, self.config.limits, self.config.bounds)

    def _label(self, member: Member) -> None:
        self._history.append(
            Labelled(
                member.id,
                pack(member.architecture),
                dict(member.proposal.resources),
                member.accuracy(self.config.error_objective),
                -1 if member.proposal.parent_id is None else member.proposal.parent_id,
            )
        )
        del self._history[: -self.options.history_limit]

    def _score_terms(self, resources: Sequence[dict[str, Any]]) -> tuple[float, list[float]]:
        """Y relative to the backbone as weight·accuracy + offset: the exact memory part is the offset."""
        backbone = self.backbone
        assert backbone is not None
        a_ref, r_ref, p_ref = self._triple(backbone)
        lam, beta = self._lam, self.options.beta
        weight = lam / max(a_ref, 1e-6)
        scale = self._memory_scale()
        offsets = [
            efficiency_score(
                0.0, r["peak_sram_bytes"], r["flash_bytes"], (a_ref, r_ref, p_ref), lam, beta, scale
            )
            for r in resources
        ]
        return weight, offsets

    def _retrain(self) -> None:
        """Fit the controller to rank every labelled candidate by its Y relative to the backbone."""
        if self.backbone is None or len(self._history) < 2:
            return
        weight, offsets = self._score_terms([h.resources for h in self._history])
        sequences = [self._sequence(h) for h in self._history]
        accuracies = [h.accuracy for h in self._history]
        steps, lr = self.options.train_steps, self.options.lr
        if isinstance(self.controller, ListController):
            groups = [h.group for h in self._history]
            self.controller.fit(
                sequences, accuracies, steps, lr, weight=weight, offsets=offsets, groups=groups
            )
        else:
            self.controller.fit(sequences, accuracies, steps, lr, weight=weight, offsets=offsets)

    def _sequence(self, item: Labelled) -> list[list[float]]:
        if item.id not in self._tokens:
            self._tokens[item.id] = encode(unpack(item.architecture), item.resources)
        return self._tokens[item.id]

    # ---- serialisation ----

    def state_to_json(self) -> dict[str, Any]:
        data = super().state_to_json()
        data["memnas"] = {
            "queue": [q.to_json() for q in self._queue],
            "round_active": self._round_active,
            "round": [m.to_json() for m in self._round],
            "children": [m.to_json() for m in self._children],
            "history": [h.to_json() for h in self._history],
            "seed_id": self._seed_id,
            "rounds": self._rounds,
            "stall": self._stall,
            "restarts": self._restarts,
            "round0": self._round0,
            "round0_done": self._round0_done,
            "lambda": self._lam,
            "trajectory": list(self.trajectory),
            "controller": self.controller.to_json(),
        }
        return data

    def _load_state(self, data: dict[str, Any]) -> None:
        super()._load_state(data)
        own = data["memnas"]
        self._queue = [_Queued.from_json(q) for q in own["queue"]]
        self._round_active = own["round_active"]
        self._round = [Member.from_json(m) for m in own["round"]]
        self._children = [Member.from_json(m) for m in own["children"]]
        self._history = [Labelled.from_json(h) for h in own["history"]]
        self._seed_id = own["seed_id"]
        self._rounds = own["rounds"]
        self._stall = own["stall"]
        self._restarts = own["restarts"]
        # States saved before round 0 existed have neither key: they never run one.
        self._round0 = own.get("round0", False)
        self._round0_done = own.get("round0_done", True)
        self._lam = own.get("lambda", self.options.lam)  # states saved before λ could move
        self.trajectory = list(own["trajectory"])
        self.controller.load_json(own["controller"])
        self._tokens = {}
