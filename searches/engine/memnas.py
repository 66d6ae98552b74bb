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
- The state, the controller's weights included (as plain float lists), serialises to JSON;
  a resumed search proposes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from searches.engine import arch as A
from searches.engine import space
from searches.engine.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.search import (
    EvalFailure,
    EvalResult,
    Member,
    Proposal,
    SearchConfig,
    SearchStrategy,
    StrategyName,
    _arch_hash,
    measure,
)

SeedKind = Literal["minimal", "random"]
Width = Literal["same", "double", "half"]


# ---- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class MemNASConfig:
    """MemNAS's own settings, stored as ``SearchConfig.strategy_options`` (JSON key ``lambda`` for λ)."""

    lam: float = 0.5
    beta: float = 0.7
    top_k: int = 4
    grow: bool = True
    trim: bool = True
    seed_backbone: SeedKind = "minimal"
    patience: int = 2
    history_limit: int = 300
    hidden: int = 24
    train_steps: int = 30
    lr: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.lam <= 1 or not 0 <= self.beta <= 1:
            raise ValueError("lambda and beta must lie in [0, 1]")
        for name in ("top_k", "patience", "hidden", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.history_limit < 2:
            raise ValueError("history_limit must be at least 2")
        if not (self.grow or self.trim):
            raise ValueError("MemNAS needs grow or trim candidates (or both)")
        if self.seed_backbone not in ("minimal", "random"):
            raise ValueError("seed_backbone must be 'minimal' or 'random'")
        if not self.lr > 0:
            raise ValueError("lr must be positive")

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["lambda"] = data.pop("lam")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemNASConfig:
        data = dict(data)
        if "lambda" in data:
            data["lam"] = data.pop("lambda")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown MemNAS option(s): {', '.join(sorted(unknown))}")
        return cls(**data)


# ---- the memory-efficiency score --------------------------------------------------------------


def efficiency_score(
    accuracy: float,
    sram: float,
    flash: float,
    reference: tuple[float, float, float],
    lam: float,
    beta: float,
) -> float:
    """MemNAS's Y of (accuracy, peak SRAM, flash) relative to ``reference`` = the backbone's triple."""
    a_ref, r_ref, p_ref = reference
    # An accuracy of exactly 0 (a diverged backbone) would divide by zero; any gain is then huge.
    gain = (accuracy - a_ref) / max(a_ref, 1e-6)
    memory = beta * (r_ref - sram) / r_ref + (1 - beta) * (p_ref - flash) / p_ref
    return lam * gain + (1 - lam) * memory


def _triple(member: Member) -> tuple[float, float, float]:
    r = member.proposal.resources
    return (member.result.val_accuracy, float(r["peak_sram_bytes"]), float(r["flash_bytes"]))


# ---- grow and trim ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowLayer:
    """The layer appended in a grow step: the same op, kernel and stride everywhere, a width rule."""

    name: str
    op: A.OpName
    kernel: int
    width: Width = "same"
    stride: int = 1

    def build(self, channels: int) -> ConvLayer:
        """The concrete layer for a block whose output has ``channels`` channels."""
        if self.op == "dwconv2d":
            filters = None
        elif self.width == "double":
            filters = min(2 * channels, A.MAX_FILTERS)
        elif self.width == "half":
            filters = max(channels // 2, A.MIN_FILTERS)
        else:
            filters = min(channels, A.MAX_FILTERS)
        return ConvLayer(self.op, self.kernel, filters, self.stride, "same", False, True, True)


GROW_LAYERS: tuple[GrowLayer, ...] = (
    GrowLayer("conv3x3", "conv2d", 3),
    GrowLayer("conv3x3 x2", "conv2d", 3, "double"),
    GrowLayer("conv5x5", "conv2d", 5),
    GrowLayer("conv3x3 stride 2", "conv2d", 3, stride=2),
    GrowLayer("conv1x1", "conv1x1", 1),
    GrowLayer("conv1x1 x2", "conv1x1", 1, "double"),
    GrowLayer("conv1x1 /2", "conv1x1", 1, "half"),
    GrowLayer("dwconv3x3", "dwconv2d", 3),
)


def block_channels(arch: Architecture) -> list[int]:
    """Output channels of every conv block."""
    return [shape[2] for shape in A.validate(arch)]


def grow_edits(arch: Architecture, layers: Sequence[GrowLayer] = GROW_LAYERS) -> list[space.Edit]:
    """Every grow step: a layer appended to every block with room, a new block, a new branch."""
    blocks = list(arch.conv_blocks)
    channels = block_channels(arch)
    last = arch.groups()[-1]
    group_input = channels[last[0] - 1] if last[0] > 0 else arch.input_shape[2]
    edits = []
    for g in layers:
        grown = [
            replace(block, layers=(*block.layers, g.build(c))) if len(block.layers) < A.MAX_LAYERS else block
            for block, c in zip(blocks, channels, strict=True)
        ]
        if grown != blocks:
            edits.append(space.Edit("grow", f"grow: append {g.name} to every block", _blocks(grown)))
        if len(blocks) < A.MAX_BLOCKS:
            block = ConvBlock((g.build(channels[-1]),))
            edits.append(space.Edit("grow", f"grow: append block {g.name}", _blocks([*blocks, block])))
            branch = ConvBlock((g.build(group_input),), branch=True)
            what = f"grow: add branch {g.name} beside block {last[0]}"
            edits.append(space.Edit("grow", what, _blocks([*blocks, branch])))
    return edits


def trim_edits(arch: Architecture) -> list[space.Edit]:
    """Every trim step: remove one layer (a one-layer block goes), one branch block, one dense layer."""
    blocks = list(arch.conv_blocks)
    edits = []
    for b, block in enumerate(blocks):
        without_block = blocks[:b] + blocks[b + 1 :]
        if block.branch:
            edits.append(space.Edit("trim", f"trim: remove edge (branch block {b})", _blocks(without_block)))
        if len(block.layers) > 1:
            for i in range(len(block.layers)):
                layers = block.layers[:i] + block.layers[i + 1 :]
                trimmed = [*blocks[:b], replace(block, layers=layers), *blocks[b + 1 :]]
                edits.append(space.Edit("trim", f"trim: remove layer b{b}l{i}", _blocks(trimmed)))
        elif not block.branch and len(blocks) > 1:
            edits.append(
                space.Edit("trim", f"trim: remove block {b} (its only layer)", _blocks(without_block))
            )
    for j in range(len(arch.dense)):
        dense = arch.dense[:j] + arch.dense[j + 1 :]
        edits.append(space.Edit("trim", f"trim: remove dense{j}", _dense(dense)))
    return edits


def _blocks(blocks: list[ConvBlock]) -> Callable[[Architecture], Architecture]:
    return lambda a: a.with_blocks(blocks)


def _dense(dense: tuple[Dense, ...]) -> Callable[[Architecture], Architecture]:
    return lambda a: replace(a, dense=dense)


def children(
    arch: Architecture, config: space.SpaceConfig, *, grow: bool = True, trim: bool = True
) -> list[space.Mutation]:
    """The valid grow and trim children of ``arch``, repaired; the first of each function is kept.

    Children that compute the same network as ``arch`` or as an earlier child (appending a
    layer to the only block and appending a block are one network) are left out.
    """
    edits = [*(grow_edits(arch) if grow else []), *(trim_edits(arch) if trim else [])]
    keys = {function_key(arch)}
    valid = []
    for edit in edits:
        mutation = space.apply_edit(arch, edit, config)
        if mutation.child is None or function_key(mutation.child) in keys:
            continue
        keys.add(function_key(mutation.child))
        valid.append(mutation)
    return valid


def function_key(arch: Architecture) -> str:
    """A key shared by architectures that differ only in where sequential blocks split a chain."""
    chain: list[Any] = []
    for group in arch.groups():
        if len(group) == 1:
            chain.extend(arch.conv_blocks[group[0]].layers)
        else:
            chain.append(tuple(arch.conv_blocks[b].layers for b in group))
    return repr((arch.input_shape, arch.classes, chain, arch.pooling, arch.dense))


def _function_hash(arch: Architecture) -> str:
    # Kept in the strategy's set of seen hashes beside the structural ones; the prefix keeps
    # the two kinds apart.
    return "f" + hashlib.sha256(function_key(arch).encode()).hexdigest()[:31]


def minimal_backbone(config: space.SpaceConfig) -> Architecture:
    """MemNAS's small seed: one 3x3 conv with 8 filters, batchnorm and ReLU, global average pooling."""
    layer = ConvLayer("conv2d", 3, 8, 1, "same", False, True, True)
    return Architecture(
        tuple(config.input_shape),  # type: ignore[arg-type]
        config.classes,
        (ConvBlock((layer,)),),
        Pooling("avg", "global"),
    )


# ---- the ranking controller ----------------------------------------------------------------------

# Token layout: conv-layer fields, then pooling, dense and resource-summary fields, then the
# token type.  Sizes are log-scaled so that 10 B and 100 kB both land in a useful range.
_OPS = {op: i for i, op in enumerate(A.OPS)}
_POOL, _DENSE, _SUMMARY = 14, 16, 17
_TYPE = 20
N_FEATURES = 24


def _log(value: float, scale: float) -> float:
    return math.log2(1.0 + value) / scale


def encode(arch: Architecture, resources: dict[str, Any]) -> list[list[float]]:
    """The controller's token sequence of a candidate (N_FEATURES floats per token)."""
    tokens = []
    shape: A.Shape = tuple(arch.input_shape)  # type: ignore[assignment]
    for group in arch.groups():
        group_input, out = shape, shape
        for b in group:
            out = group_input
            block = arch.conv_blocks[b]
            for i, layer in enumerate(block.layers):
                out = A.layer_output_shape(layer, out)[1]
                t = [0.0] * N_FEATURES
                t[_OPS[layer.op]] = 1.0
                t[3] = layer.kernel / 7
                t[4] = float(layer.stride == 2)
                t[5] = out[2] / A.MAX_FILTERS
                t[6] = float(layer.pre_pool)
                t[7] = float(layer.batchnorm)
                t[8] = float(layer.relu)
                t[9] = float(layer.padding == "valid")
                t[10] = float(block.branch)
                t[11] = b / A.MAX_BLOCKS
                t[12] = i / A.MAX_LAYERS
                t[13] = _log(out[0] * out[1] * out[2], 16)
                t[_TYPE] = 1.0
                tokens.append(t)
        shape = out
    if arch.pooling is not None:
        t = [0.0] * N_FEATURES
        t[_POOL] = float(arch.pooling.type == "max")
        t[_POOL + 1] = 1.0 if arch.pooling.size == "global" else arch.pooling.size / max(A.POOL_SIZES)
        t[_TYPE + 1] = 1.0
        tokens.append(t)
    for d in arch.dense:
        t = [0.0] * N_FEATURES
        t[_DENSE] = d.units / A.MAX_UNITS
        t[_TYPE + 2] = 1.0
        tokens.append(t)
    t = [0.0] * N_FEATURES
    t[_SUMMARY] = _log(resources["peak_sram_bytes"], 20)
    t[_SUMMARY + 1] = _log(resources["flash_bytes"], 20)
    t[_SUMMARY + 2] = _log(resources["macs"], 30)
    t[_TYPE + 3] = 1.0
    tokens.append(t)
    return tokens


@contextlib.contextmanager
def _torch_cpu(seed: int | None = None) -> Iterator[None]:
    """One thread (fast for tiny nets and deterministic), global RNG seeded and restored."""
    old_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(old_threads)


class _AccuracyNet(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(N_FEATURES, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return torch.sigmoid(self.head(h[-1]).squeeze(-1))


def _batch(sequences: Sequence[list[list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    x = torch.zeros(len(sequences), int(lengths.max()), N_FEATURES)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = torch.tensor(s)
    return x, lengths


class Controller:
    """Ranks candidates by a predicted score ŷ = weight·â + offset, â the GRU's accuracy estimate.

    In MemNAS's Y only the accuracy is unknown before training (the memory terms are exact),
    so the strategy passes the score's accuracy weight λ/a_b and each candidate's exact
    remainder as ``offset``.  Training minimises a pairwise logistic ranking loss on ŷ over
    all pairs ordered by their measured targets (temperature ``TAU``: ordering by a clear
    margin is enough), plus a squared error on â that keeps the estimate an accuracy and so
    comparable with the exact memory part.
    """

    TAU = 0.02

    def __init__(self, hidden: int, seed: int) -> None:
        with _torch_cpu(seed):
            self.net = _AccuracyNet(hidden)

    def predict(self, sequences: Sequence[list[list[float]]]) -> list[float]:
        """The estimated accuracy of each sequence."""
        if not sequences:
            return []
        with _torch_cpu(), torch.no_grad():
            return [float(v) for v in self.net(*_batch(sequences))]

    def score(
        self,
        sequences: Sequence[list[list[float]]],
        weight: float = 1.0,
        offsets: Sequence[float] | None = None,
    ) -> list[float]:
        """ŷ = weight·â + offset per sequence (higher = better)."""
        offsets = offsets if offsets is not None else [0.0] * len(sequences)
        return [weight * a + o for a, o in zip(self.predict(sequences), offsets, strict=True)]

    def fit(
        self,
        sequences: Sequence[list[list[float]]],
        accuracies: Sequence[float],
        steps: int,
        lr: float,
        *,
        weight: float = 1.0,
        offsets: Sequence[float] | None = None,
    ) -> float:
        """Full-batch Adam steps from the current weights; returns the last loss.

        The pairs are ordered by the measured score weight·accuracy + offset.
        """
        acc = torch.tensor(list(accuracies), dtype=torch.float32)
        off = torch.tensor(list(offsets) if offsets is not None else [0.0] * len(acc), dtype=torch.float32)
        y = weight * acc.double() + off.double()
        better = (y[:, None] - y[None, :]) > 1e-9  # better[i, j]: i should score above j
        x, lengths = _batch(sequences)
        loss_value = 0.0
        params = list(self.net.parameters())
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        with _torch_cpu():
            for step in range(1, steps + 1):
                a = self.net(x, lengths)
                s = (weight * a + off) / self.TAU
                loss = (((a - acc) / self.TAU) ** 2).mean()
                if bool(better.any()):
                    loss = loss + F.softplus(-(s[:, None] - s[None, :])[better]).mean()
                grads = torch.autograd.grad(loss, params)
                _adam_step(params, grads, moments, step, lr)
                loss_value = loss.item()
        return loss_value

    def to_json(self) -> dict[str, Any]:
        """The weights as plain lists; each float is float32's shortest repr, which reloads exactly."""
        return {
            name: {"shape": list(t.shape), "data": [float(str(v)) for v in t.detach().reshape(-1).numpy()]}
            for name, t in self.net.state_dict().items()
        }

    def load_json(self, data: dict[str, Any]) -> None:
        state = {
            name: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"]) for name, v in data.items()
        }
        self.net.load_state_dict(state)


@torch.no_grad()
def _adam_step(
    params: list[nn.Parameter],
    grads: Sequence[torch.Tensor],
    moments: list[tuple[torch.Tensor, torch.Tensor]],
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Plain Adam: torch.optim's first step imports torch._dynamo, seconds for a sub-second fit."""
    b1, b2 = betas
    for p, g, (m, v) in zip(params, grads, moments, strict=True):
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**step)).sqrt_().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - b1**step))


def pairwise_accuracy(scores: Sequence[float], targets: Sequence[float]) -> float:
    """Fraction of pairs with different targets that ``scores`` order the same way (0.5 = chance)."""
    right = total = 0
    for i in range(len(targets)):
        for j in range(i + 1, len(targets)):
            if targets[i] == targets[j]:
                continue
            total += 1
            right += (scores[i] - scores[j]) * (targets[i] - targets[j]) > 0
    return right / total if total else 1.0


# ---- the strategy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """A trained candidate the controller learns from: its architecture, accuracy and memory."""

    id: int
    architecture: list[Any]  # packed
    resources: dict[str, Any]
    accuracy: float

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
        self.controller = Controller(self.options.hidden, config.seed)
        self._queue: list[_Queued] = []
        self._round_active = False
        self._round: list[Member] = []  # this round's told members
        self._children: list[Member] = []  # every evaluated child of the current backbone
        self._history: list[Labelled] = []
        self._seed_id: int | None = None
        self._rounds = 0
        self._stall = 0
        self._restarts = 0
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
            if self._outstanding:
                return None  # the round (or the seed) is being evaluated
            self._maybe_finish_round()
            if self.backbone is None:
                return self._seed()
            if not self._start_round():
                # No new feasible child left around this backbone: start over from a random one.
                self.trajectory.append({"round": self._rounds, "restart": True})
                self._population, self._children, self._stall = [], [], 0
                self._restarts += 1

    def _hand_out(self, item: _Queued) -> Proposal:
        backbone = self.backbone
        assert backbone is not None
        return Proposal(
            self._take_id(),
            item.architecture,
            "mutation",
            item.description,
            item.resources,
            parent_id=backbone.id,
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

    def _is_seen(self, arch: Architecture) -> bool:
        return _arch_hash(arch) in self._seen or _function_hash(arch) in self._seen

    def _mark_seen(self, arch: Architecture) -> None:
        self._seen.update((_arch_hash(arch), _function_hash(arch)))

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

    def _maybe_finish_round(self) -> None:
        budget_spent = self._asked >= self.config.budget
        if self._round_active and not self._outstanding and (not self._queue or budget_spent):
            self._finish_round()

    def _finish_round(self) -> None:
        backbone = self.backbone
        assert backbone is not None
        reference = _triple(backbone)
        opts = self.options
        scores = {m.id: efficiency_score(*_triple(m), reference, opts.lam, opts.beta) for m in self._round}
        self._children.extend(self._round)
        best = max(self._round, key=lambda m: scores[m.id], default=None)
        why = None
        if best is not None and scores[best.id] > 0:
            why = "best Y > 0"
        else:
            self._stall += 1
            if self._stall >= opts.patience and self._children:
                ys = {
                    m.id: efficiency_score(*_triple(m), reference, opts.lam, opts.beta)
                    for m in self._children
                }
                best = max(self._children, key=lambda m: ys[m.id])
                why = f"no Y > 0 in {self._stall} rounds: best child taken"
        entry: dict[str, Any] = {"round": self._rounds + 1, "scores": {str(k): v for k, v in scores.items()}}
        if why is not None and best is not None:
            self._population = [best]
            self._children = []
            self._stall = 0
            entry.update(backbone=best.id, why=why)
        self.trajectory.append(entry)
        self._round = []
        self._round_active = False
        self._rounds += 1
        self._retrain()

    def _label(self, member: Member) -> None:
        self._history.append(
            Labelled(
                member.id,
                pack(member.architecture),
                dict(member.proposal.resources),
                member.result.val_accuracy,
            )
        )
        del self._history[: -self.options.history_limit]

    def _score_terms(self, resources: Sequence[dict[str, Any]]) -> tuple[float, list[float]]:
        """Y relative to the backbone as weight·accuracy + offset: the exact memory part is the offset."""
        backbone = self.backbone
        assert backbone is not None
        a_ref, r_ref, p_ref = _triple(backbone)
        lam, beta = self.options.lam, self.options.beta
        weight = lam / max(a_ref, 1e-6)
        offsets = [
            efficiency_score(0.0, r["peak_sram_bytes"], r["flash_bytes"], (a_ref, r_ref, p_ref), lam, beta)
            for r in resources
        ]
        return weight, offsets

    def _retrain(self) -> None:
        """Fit the controller to rank every labelled candidate by its Y relative to the backbone."""
        if self.backbone is None or len(self._history) < 2:
            return
        weight, offsets = self._score_terms([h.resources for h in self._history])
        self.controller.fit(
            [self._sequence(h) for h in self._history],
            [h.accuracy for h in self._history],
            self.options.train_steps,
            self.options.lr,
            weight=weight,
            offsets=offsets,
        )

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
        self.trajectory = list(own["trajectory"])
        self.controller.load_json(own["controller"])
        self._tokens = {}
