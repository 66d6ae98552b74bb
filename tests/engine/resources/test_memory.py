"""Peak SRAM: hand-computed cases, and both solvers against brute force over all topological orders."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searches.engine.resources.memory import (
    METHOD_DOWNSET_DP,
    METHOD_SERIES_PARALLEL,
    MemoryPlan,
    brute_force_peak,
    plan_memory,
    step_timeline,
)
from searches.engine.resources.opgraph import Op, OpGraph, Tensor

# brute force stays well under a second per example up to this many interleavings
MAX_ORDERS = 20_000
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def graph(
    tensors: dict[str, int], ops: list[tuple[str, list[str], list[str]]], kind: str = "conv"
) -> OpGraph:
    """Build a graph from {tensor: bytes} and (op, inputs, outputs) in default order."""
    return OpGraph(
        tuple(Tensor(t, b) for t, b in tensors.items()),
        tuple(Op(o, "add" if o.startswith("add") else kind, tuple(i), tuple(out)) for o, i, out in ops),
    )


def literal_timeline(g: OpGraph, order: tuple[str, ...]) -> list[int]:
    """The definition, spelled out: live if written at or before k and last read at or after k."""
    step = {op_id: k for k, op_id in enumerate(order)}
    ops = {op.id: op for op in g.ops}
    last = len(order) - 1
    out = []
    for k in range(len(order)):
        live = 0
        for t in g.tensors:
            written = [step[o] for o in ops if t.id in ops[o].outputs]
            read = [step[o] for o in ops if t.id in ops[o].inputs]
            born = written[0] if written else -1
            dies = max(read) if read else last
            live += t.bytes if born <= k <= dies else 0
        out.append(live)
    return out


def is_topological(g: OpGraph, order: tuple[str, ...]) -> bool:
    producer = g.producers()
    seen: set[str] = set()
    for op_id in order:
        op = next(o for o in g.ops if o.id == op_id)
        if any(t in producer and producer[t] not in seen for t in op.inputs):
            return False
        seen.add(op_id)
    return sorted(order) == sorted(o.id for o in g.ops)


def check_plan(g: OpGraph, plan: MemoryPlan) -> None:
    """Everything a plan promises about itself, independent of optimality."""
    sizes = g.tensor_bytes()
    assert is_topological(g, plan.order)
    assert list(plan.timeline) == step_timeline(g, plan.order) == literal_timeline(g, plan.order)
    assert max(plan.timeline, default=0) == plan.peak_bytes
    assert list(plan.default_timeline) == literal_timeline(g, tuple(o.id for o in g.ops))
    assert plan.default_peak_bytes == max(plan.default_timeline, default=0) >= plan.peak_bytes
    assert [sum(sizes[t] for t in live) for live in plan.live_sets] == list(plan.timeline)
    assert [sum(sizes[t] for t in live) for live in plan.default_live_sets] == list(plan.default_timeline)


# ---------------------------------------------------------------------------------------- by hand


def test_chain_peak_is_largest_input_plus_output() -> None:
    g = graph({"x": 10, "y": 20, "z": 5}, [("a", ["x"], ["y"]), ("b", ["y"], ["z"])])
    plan = plan_memory(g)
    assert plan.peak_bytes == 30
    assert plan.order == ("a", "b")
    assert plan.timeline == (30, 25)
    assert plan.live_sets == (("x", "y"), ("y", "z"))
    assert plan.method == METHOD_SERIES_PARALLEL
    assert brute_force_peak(g) == 30


def test_fork_order_matters() -> None:
    # X=10 feeds p1 -> P (100) -> p2 -> P2 (1) and q1 -> Q (50); add joins P2 and Q into Z (5).
    # Branch p first: 110, 111 (X still waits for q1), 61, 56 -> 111.
    # Branch q first (the default): 60, 160 (X + Q + P), 151, 56 -> 160.
    g = graph(
        {"X": 10, "P": 100, "P2": 1, "Q": 50, "Z": 5},
        [("q1", ["X"], ["Q"]), ("p1", ["X"], ["P"]), ("p2", ["P"], ["P2"]), ("add", ["P2", "Q"], ["Z"])],
    )
    plan = plan_memory(g)
    assert plan.peak_bytes == 111
    assert plan.order == ("p1", "p2", "q1", "add")
    assert plan.timeline == (110, 111, 61, 56)
    assert plan.default_peak_bytes == 160
    assert plan.default_timeline == (60, 160, 151, 56)
    assert plan.saved_bytes == 49
    assert plan.method == METHOD_SERIES_PARALLEL
    assert brute_force_peak(g) == 111
    assert plan.live_tensors(1) == ("X", "P", "P2")
    assert plan.live_tensors(1, default=True) == ("X", "P", "Q")


def test_network_input_counts_until_its_last_reader() -> None:
    g = graph({"in": 1000, "out": 1}, [("a", ["in"], ["out"])])
    assert plan_memory(g).peak_bytes == 1001
    # x is read again by c, so it is held through b
    g = graph(
        {"x": 100, "y": 1, "w": 1, "z": 1},
        [("a", ["x"], ["y"]), ("b", ["y"], ["w"]), ("c", ["w", "x"], ["z"])],
    )
    plan = plan_memory(g)
    assert plan.timeline == (101, 102, 102)
    assert plan.live_sets[1] == ("x", "y", "w")


def test_network_outputs_count_until_the_end() -> None:
    # out1 is never read: it stays live through b
    g = graph(
        {"in": 5, "out1": 100, "t": 1, "out2": 1},
        [("a", ["in"], ["out1", "t"]), ("b", ["t"], ["out2"])],
    )
    plan = plan_memory(g)
    assert plan.timeline == (106, 102)
    assert "out1" in plan.live_tensors(1)
    assert plan.peak_bytes == brute_force_peak(g) == 106


def test_unused_tensor_is_live_at_every_step() -> None:
    g = graph({"x": 3, "lonely": 50, "y": 4}, [("a", ["x"], ["y"])])
    assert plan_memory(g).timeline == (57,)


def test_empty_graph() -> None:
    plan = plan_memory(OpGraph((), ()))
    assert (plan.peak_bytes, plan.order, plan.timeline, plan.default_peak_bytes) == (0, (), (), 0)
    assert brute_force_peak(OpGraph((), ())) == 0


def test_step_timeline_rejects_bad_orders() -> None:
    g = graph({"x": 1, "y": 1, "z": 1}, [("a", ["x"], ["y"]), ("b", ["y"], ["z"])])
    assert step_timeline(g, ["a", "b"]) == [2, 2]
    with pytest.raises(ValueError, match="permutation"):
        step_timeline(g, ["a"])
    with pytest.raises(ValueError, match="permutation"):
        step_timeline(g, ["a", "a"])
    with pytest.raises(ValueError, match="before"):
        step_timeline(g, ["b", "a"])


def test_plan_to_json_is_plain_lists() -> None:
    data = plan_memory(graph({"x": 1, "y": 2}, [("a", ["x"], ["y"])])).to_json()
    assert data["order"] == ["a"]
    assert data["live_sets"] == [["x", "y"]]


# ------------------------------------------------------------------------------------- generators


@st.composite
def small_dags(draw: st.DrawFn, max_ops: int = 8) -> OpGraph:
    """Arbitrary DAGs: any number of inputs and outputs per op, shared reads, unread tensors."""
    size = st.integers(1, 1000)
    tensors = {f"in{i}": draw(size) for i in range(draw(st.integers(1, 3)))}
    available = list(tensors)
    ops = []
    for v in range(draw(st.integers(1, max_ops))):
        reads = draw(st.lists(st.sampled_from(available), max_size=3))
        outs = [f"t{v}_{i}" for i in range(draw(st.integers(0, 2)))]
        tensors.update({t: draw(size) for t in outs})
        ops.append((f"op{v}", reads, outs))
        available += outs
    return graph(tensors, ops)


def _interleavings(lengths: list[int]) -> int:
    return math.factorial(sum(lengths)) // math.prod(math.factorial(n) for n in lengths)


@st.composite
def fork_join_graphs(
    draw: st.DrawFn, max_regions: int = 3, max_branches: int = 4, max_len: int = 4, budget: int = MAX_ORDERS
) -> OpGraph:
    """A stem of regions: single ops or forks of parallel chains joined by an add, maybe a long skip."""
    small, wide = st.integers(1, 1000), st.sampled_from([1, 2, 5, 10_000, 200_000])
    size = st.one_of(small, wide)
    tensors = {"input": draw(size)}
    ops: list[tuple[str, list[str], list[str]]] = []
    current, orders = "input", 1
    for r in range(draw(st.integers(1, max_regions))):
        if draw(st.booleans()) and r:
            ops.append((f"s{r}", [current], [f"s{r}"]))
            tensors[f"s{r}"] = draw(size)
            current = f"s{r}"
            continue
        lengths = draw(st.lists(st.integers(1, max_len), min_size=2, max_size=max_branches))
        # shorten the longest chain until brute force over all regions stays affordable
        while orders * _interleavings(lengths) > budget:
            lengths[lengths.index(max(lengths))] -= 1
        orders *= _interleavings(lengths)
        # the fork tensor is sometimes far larger or smaller than everything in its chains
        tensors[current] = draw(st.one_of(size, st.sampled_from([1, 1_000_000])))
        ends = []
        for j, n in enumerate(lengths):
            src = current
            for i in range(n):
                name = f"r{r}b{j}l{i}"
                tensors[name] = draw(size)
                ops.append((name, [src], [name]))
                src = name
            ends.append(src)
        ops.append((f"add{r}", ends, [f"j{r}"]))
        tensors[f"j{r}"] = draw(size)
        current = f"j{r}"
    if draw(st.booleans()):
        # a long skip: the last op reads the network input too, so it is held across every region
        name, reads, outs = ops[-1]
        ops[-1] = (name, [*reads, "input"], outs)
    return graph(tensors, ops)


def fork_join(rng: random.Random, branches: int, layers: int, x_bytes: int | None = None) -> OpGraph:
    """One fork of ``branches`` chains of ``layers`` ops with random sizes, then an add."""
    tensors = {"x": x_bytes if x_bytes is not None else rng.randint(1_000, 100_000)}
    ops = []
    ends = []
    for j in range(branches):
        src = "x"
        for i in range(layers):
            name = f"b{j}l{i}"
            tensors[name] = rng.randint(1_000, 100_000)
            ops.append((name, [src], [name]))
            src = name
        ends.append(src)
    tensors["z"] = rng.randint(1_000, 100_000)
    ops.append(("add", ends, ["z"]))
    return graph(tensors, ops)


# ----------------------------------------------------------------------------------- properties


@SLOW
@given(small_dags())
def test_any_small_dag_matches_brute_force(g: OpGraph) -> None:
    plan = plan_memory(g)
    assert plan.peak_bytes == brute_force_peak(g)
    check_plan(g, plan)


@settings(max_examples=40, deadline=None)
@given(small_dags(max_ops=6))
def test_brute_force_matches_the_literal_definition(g: OpGraph) -> None:
    orders = [o for o in itertools.permutations(op.id for op in g.ops) if is_topological(g, o)]
    assert brute_force_peak(g) == min(max(literal_timeline(g, o)) for o in orders)


@SLOW
@given(fork_join_graphs())
def test_fork_join_takes_the_series_parallel_path_and_is_exact(g: OpGraph) -> None:
    plan = plan_memory(g)
    assert plan.method == METHOD_SERIES_PARALLEL
    assert plan.peak_bytes == brute_force_peak(g)
    check_plan(g, plan)


@settings(max_examples=60, deadline=None)
@given(fork_join_graphs(max_regions=1, max_branches=6, max_len=4, budget=10**9))
def test_wider_fork_joins_agree_with_the_general_solver(g: OpGraph) -> None:
    fast, general = plan_memory(g), plan_memory(g, force_general=True)
    assert fast.method == METHOD_SERIES_PARALLEL
    assert general.method == METHOD_DOWNSET_DP
    assert fast.peak_bytes == general.peak_bytes
    check_plan(g, fast)


@pytest.mark.parametrize("seed", range(8))
def test_six_branch_forks_agree_with_the_general_solver(seed: int) -> None:
    rng = random.Random(seed)
    x_bytes = [None, 1, 10_000_000][seed % 3]
    g = fork_join(rng, 5 + seed % 2, 4 - seed % 2, x_bytes)
    fast, general = plan_memory(g), plan_memory(g, force_general=True)
    assert fast.peak_bytes == general.peak_bytes
    check_plan(g, fast)


@settings(max_examples=60, deadline=None)
@given(fork_join_graphs(max_regions=1, max_branches=3, max_len=3))
def test_skip_connection_keeps_the_fork_tensor(g: OpGraph) -> None:
    # the add also reads the fork tensor directly, so it is held through the whole fork
    add = g.ops[-1]
    fork = g.ops[0].inputs[0]
    ops = (*g.ops[:-1], Op(add.id, "add", (*add.inputs, fork), add.outputs))
    skip = OpGraph(g.tensors, ops)
    plan = plan_memory(skip)
    assert plan.peak_bytes == brute_force_peak(skip)
    assert all(fork in live for live in plan.live_sets[:-1])
    check_plan(skip, plan)


# --------------------------------------------------------------- shapes the fast path must refuse


@SLOW
@given(fork_join_graphs(max_regions=1, max_branches=3, max_len=3, budget=2_000), st.data())
def test_unrecognised_shapes_use_the_general_solver(g: OpGraph, data: st.DataObject) -> None:
    fork = g.ops[0].inputs[0]
    inner = [op for op in g.ops if op.kind != "add" and op.inputs[0] != fork]
    shapes = ["nested-fork", "two-outputs"] + (["extra-input"] if inner else [])
    shape = data.draw(st.sampled_from(shapes))
    victim = data.draw(st.sampled_from(inner if shape == "extra-input" else list(g.ops[:-1])))
    ops, tensors = list(g.ops), list(g.tensors)
    at = ops.index(victim)
    if shape == "extra-input":
        # a chain link that also reads the fork tensor: X's lifetime now depends on that link
        ops[at] = Op(victim.id, victim.kind, (*victim.inputs, fork), victim.outputs)
    elif shape == "nested-fork":
        # the victim's output also feeds a second op running beside the rest of its chain
        tensors.append(Tensor("side", data.draw(st.integers(1, 1000))))
        ops.insert(at + 1, Op("side_op", "conv", victim.outputs, ("side",)))
        ops[-1] = Op(ops[-1].id, "add", (*ops[-1].inputs, "side"), ops[-1].outputs)
    else:
        # a second, never-read output: a network output born inside the fork
        tensors.append(Tensor("aux", data.draw(st.integers(1, 1000))))
        ops[at] = Op(victim.id, victim.kind, victim.inputs, (*victim.outputs, "aux"))
    changed = OpGraph(tuple(tensors), tuple(ops))
    plan = plan_memory(changed)
    assert plan.method == METHOD_DOWNSET_DP
    assert plan.peak_bytes == brute_force_peak(changed)
    check_plan(changed, plan)


def test_chains_with_a_shared_reader_go_to_the_general_solver() -> None:
    # b reads the fork tensor as well as a's output, so it is not a single-input chain link
    g = graph(
        {"x": 50, "a": 10, "b": 10, "c": 10, "z": 1},
        [("a", ["x"], ["a"]), ("b", ["a", "x"], ["b"]), ("c", ["x"], ["c"]), ("add", ["b", "c"], ["z"])],
    )
    plan = plan_memory(g)
    assert plan.method == METHOD_DOWNSET_DP
    assert plan.peak_bytes == brute_force_peak(g)


# -------------------------------------------------------------------------------- the target case


def test_eight_branches_of_four_layers_solve() -> None:
    rng = random.Random(7)
    for x_bytes in (None, 1, 10_000_000):
        g = fork_join(rng, 8, 4, x_bytes)
        plan = plan_memory(g)
        assert plan.method == METHOD_SERIES_PARALLEL
        assert len(plan.order) == 33
        check_plan(g, plan)


def test_tensors_beyond_32_bit_sums_stay_exact() -> None:
    # a 3 GiB fork tensor pushes the lattice DP off int32
    g = fork_join(random.Random(3), 3, 3, x_bytes=3 << 30)
    plan = plan_memory(g)
    assert plan.method == METHOD_SERIES_PARALLEL
    assert plan.peak_bytes == brute_force_peak(g) > 1 << 31
    check_plan(g, plan)


def test_fork_tensor_released_by_starting_every_branch_first() -> None:
    # each branch: tiny first layer, huge second, tiny third; the fork tensor is huge too.
    # Best: start all three branches (X is freed once the last starts), then finish them.
    sizes = {"x": 1000, "z": 1}
    ops = []
    for j in range(3):
        for i, b in enumerate((1, 100, 1)):
            sizes[f"b{j}l{i}"] = b
            ops.append((f"b{j}l{i}", [f"b{j}l{i - 1}" if i else "x"], [f"b{j}l{i}"]))
    ops.append(("add", [f"b{j}l2" for j in range(3)], ["z"]))
    g = graph(sizes, ops)
    plan = plan_memory(g)
    assert plan.peak_bytes == brute_force_peak(g) == 1003
    assert set(plan.order[:3]) == {"b0l0", "b1l0", "b2l0"}
    assert plan.default_peak_bytes == 1102  # X + a finished branch + a started one + 100
