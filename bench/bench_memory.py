"""Benchmark the exact peak-SRAM solver (searches/engine/resources/memory.py): exactness, then speed.

Run ``python bench/bench_memory.py`` (writes the "Peak-SRAM solver" section of
docs/benchmarks.md; ``--no-docs`` only prints).  Exactness: plan_memory against brute
force over all topological orders on random small graphs.  Speed: plan_memory on random
fork-join graphs (k parallel branches of 4 layers, every tensor a random size), reported
as the median over graphs of each graph's median over repetitions: the machine is shared
and noisy, so medians, not means.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from searches.engine.resources.memory import METHOD_SERIES_PARALLEL, brute_force_peak, plan_memory
from searches.engine.resources.opgraph import Op, OpGraph, Tensor

DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Peak-SRAM solver"
COMMAND = "python bench/bench_memory.py"


# ---- graphs ------------------------------------------------------------------------------


def _size(rng: random.Random) -> int:
    # conv activations: a few bytes to a few hundred kB, spread over orders of magnitude
    return int(math.exp(rng.uniform(math.log(16), math.log(200_000))))


def fork_join_stem(rng: random.Random, regions: list[tuple[int, int]]) -> OpGraph:
    """A stem of fork-join regions; ``regions`` lists (branches, layers) per region (1 branch: a chain)."""
    tensors = [Tensor("input", _size(rng))]
    ops: list[Op] = []
    current = "input"
    for r, (branches, layers) in enumerate(regions):
        ends = []
        for b in range(branches):
            src = current
            for i in range(layers):
                name = f"r{r}b{b}l{i}"
                tensors.append(Tensor(name, _size(rng)))
                ops.append(Op(name, "conv2d", (src,), (name,)))
                src = name
            ends.append(src)
        if branches > 1:
            tensors.append(Tensor(f"add{r}", _size(rng)))
            ops.append(Op(f"add{r}", "add", tuple(ends), (f"add{r}",)))
            current = f"add{r}"
        else:
            current = ends[0]
    return OpGraph(tuple(tensors), tuple(ops))


def random_dag(rng: random.Random, n_ops: int) -> OpGraph:
    """An arbitrary small DAG: several inputs, shared reads, multi-output and unread tensors."""
    tensors = [Tensor(f"in{i}", rng.randint(1, 1000)) for i in range(rng.randint(1, 3))]
    available = [t.id for t in tensors]
    ops = []
    for v in range(n_ops):
        reads = tuple(rng.sample(available, rng.randint(0, min(3, len(available)))))
        outs = tuple(f"t{v}_{i}" for i in range(rng.randint(0, 2)))
        tensors += [Tensor(t, rng.randint(1, 1000)) for t in outs]
        ops.append(Op(f"op{v}", "op", reads, outs))
        available += outs
    return OpGraph(tuple(tensors), tuple(ops))


def small_fork_join(rng: random.Random) -> OpGraph:
    """One or two small fork-join regions whose interleavings brute force can still enumerate."""
    regions = []
    for _ in range(rng.randint(1, 2)):
        k = rng.randint(2, 3)
        regions.append((k, rng.randint(1, 4 if k == 2 else 2)))
    return fork_join_stem(rng, regions)


# ---- measurements ------------------------------------------------------------------------


def exactness(n: int, seed: int = 0) -> tuple[int, int, int, float]:
    """Check ``n`` random graphs against brute force: (n, mismatches, fast-path count, seconds)."""
    rng = random.Random(seed)
    mismatches = series_parallel = 0
    start = time.perf_counter()
    for i in range(n):
        g = random_dag(rng, rng.randint(1, 8)) if i % 2 else small_fork_join(rng)
        plan = plan_memory(g)
        series_parallel += plan.method == METHOD_SERIES_PARALLEL
        mismatches += plan.peak_bytes != brute_force_peak(g)
    return n, mismatches, series_parallel, time.perf_counter() - start


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``reps`` calls."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _planner(g: OpGraph, **kw: bool) -> Callable[[], object]:
    return lambda: plan_memory(g, **kw)


def time_graphs(graphs: list[OpGraph], reps: int, **kw: bool) -> tuple[float, float]:
    """(median, max) over graphs of each graph's median plan_memory time, in ms."""
    per_graph = [median_seconds(_planner(g, **kw), reps) * 1e3 for g in graphs]
    return statistics.median(per_graph), max(per_graph)


def speed(graphs_per_case: int, reps: int, seed: int = 1) -> list[tuple[str, ...]]:
    """Rows: case, ops, fast median/max ms, general-solver median ms and agreement, saving vs default."""
    rng = random.Random(seed)
    cases = [(f"{k} branches x 4 layers", [(k, 4)], True) for k in (2, 4, 6, 8)]
    cases += [
        ("10 regions, each 4 branches x 4 layers", [(4, 4)] * 10, False),
        ("10 regions, each 8 branches x 4 layers", [(8, 4)] * 10, False),
    ]
    rows: list[tuple[str, ...]] = []
    for name, regions, with_general in cases:
        graphs = [fork_join_stem(rng, regions) for _ in range(graphs_per_case)]
        fast_med, fast_max = time_graphs(graphs, reps)
        plans = [plan_memory(g) for g in graphs]
        general = "-"
        if with_general:
            # one run each: the general solver is the slow reference, not the thing measured
            times, same = [], 0
            for g, plan in zip(graphs[: max(3, graphs_per_case // 4)], plans, strict=False):
                start = time.perf_counter()
                same += plan_memory(g, force_general=True).peak_bytes == plan.peak_bytes
                times.append((time.perf_counter() - start) * 1e3)
            general = f"{statistics.median(times):.1f} ({same}/{len(times)} equal)"
        saved = statistics.median(1 - p.peak_bytes / p.default_peak_bytes for p in plans)
        rows.append(
            (name, str(len(graphs[0].ops)), f"{fast_med:.2f} / {fast_max:.2f}", general, f"{saved:.0%}")
        )
    return rows


# ---- report ------------------------------------------------------------------------------


def machine() -> str:
    """CPU model, usable cores and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores usable, CPython {platform.python_version()}, numpy {np.__version__}"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report(n_exact: int, graphs_per_case: int, reps: int) -> list[str]:
    """The markdown body of the section."""
    n, bad, sp, secs = exactness(n_exact)
    rows = speed(graphs_per_case, reps)
    # the machine is shared: say how busy it was while the timings ran
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [
        f"Command: `{COMMAND}` on {machine()}; 1-minute load average {load:.1f} at the end of the run.",
        "",
        f"**Exactness.** {n} random small graphs (half arbitrary DAGs of 1-8 ops, half one or two",
        f"fork-join regions; {sp} took the series-parallel path): plan_memory against brute force over",
        f"all topological orders, **{bad} mismatches** ({secs:.1f} s). The test suite",
        "(`tests/engine/resources/test_memory.py`) repeats this with hypothesis and also checks the",
        "fast path against the general downset solver on forks of up to 6 branches.",
        "",
        "**Speed.** plan_memory on random fork-join graphs, every tensor a random size (16 B-200 kB,",
        f"log-uniform). Time per graph = median of {reps} runs; the table gives the median and the",
        f"maximum of that over {graphs_per_case} graphs, in ms, including lifetimes and live sets of",
        'both orders. "General" forces the downset solver (best-first over sets of executed ops) on',
        "the first few of the same graphs, one run each, and counts how often its peak equals the fast one.",
        "For scale: the μNAS reference memoised search is quoted at 174 s on 8 x 4 (not measured here).",
        "",
        *_table(
            (
                "graph",
                "ops",
                "plan_memory ms (median / max)",
                "general solver ms (peaks equal)",
                "saved vs default",
            ),
            rows,
        ),
    ]


def write_section(body: list[str]) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md, leaving others alone."""
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    new = [SECTION, "", *body]
    if start is None:
        lines += ["", *new]
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines[start:end] = [*new, ""]
    DOCS.write_text("\n".join(lines).rstrip("\n") + "\n")


def main() -> None:
    """Run the benchmark, print the section and (unless --no-docs) write it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exact", type=int, default=1000, help="random graphs checked against brute force")
    parser.add_argument("--graphs", type=int, default=20, help="random graphs per timing case")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per graph")
    parser.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/benchmarks.md")
    args = parser.parse_args()
    body = report(args.exact, args.graphs, args.reps)
    print("\n".join([SECTION, "", *body]))
    if not args.no_docs:
        write_section(body)


if __name__ == "__main__":
    main()
