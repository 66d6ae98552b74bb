"""Calibrate and measure the instruction-count latency model against QEMU.

``python bench/bench_latency.py --calibrate`` draws random architectures (seeds 101, 103, 105)
with the space sampler for the inputs users search on (digits 8x8x1, Fashion-MNIST 28x28x1),
builds each one's C header with random weights, counts the instructions of every layer of one
inference under QEMU on every core family (Cortex-M0+, M3, M4/M7 alternating, M33) with
bench/latency_profile.py, fits the model's coefficients per family (non-negative least squares,
each layer's error relative to its model's count) and writes
``searches/engine/resources/latency_coefficients.json``.

``python bench/bench_latency.py --measure`` draws 50 fresh architectures (seed 202), predicts
their counts with the checked-in coefficients, counts them under QEMU and writes the error table
to docs/resource-model.md and docs/benchmarks.md (``--no-docs`` only prints).

Counts are stored per generated header, QEMU target and harness in
``bench/results/latency/counts.jsonl`` (committed, so a refit on a fresh clone needs no
emulation); an edited kernel or harness changes the key, so it is measured afresh.  Run it
under ``nice -n 19``; ``--jobs`` (default 2) processes emulate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
from functools import cache
from multiprocessing import Pool
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TITLE = "Latency model: predicted vs QEMU instruction counts"
CALIBRATE_COMMAND = "nice -n 19 python bench/bench_latency.py --calibrate"
MEASURE_COMMAND = "nice -n 19 python bench/bench_latency.py --measure"
# Calibration draws (seed, architectures per task); held-out measurement draws with MEASURE_SEED.
CALIBRATE_DRAWS = ((101, 60), (103, 20), (105, 240))
MEASURE_SEED = 202
MEASURE_PER_TASK = 25
TASKS = (("digits", (8, 8, 1), 2_000), ("Fashion-MNIST", (28, 28, 1), 20_000))
# The QEMU target that stands for each core family; M4/M7 alternates between its two cores.
FAMILY_TARGETS = {
    "cortex-m0plus": ("cortex-m0plus",),
    "cortex-m3": ("cortex-m3",),
    "cortex-m4": ("cortex-m4f", "cortex-m7"),
    "cortex-m33": ("cortex-m33",),
}


def pick_archs(seed: int, per_task: int) -> list[dict[str, Any]]:
    """``per_task`` random architectures per task, of the size users search for (see module doc)."""
    from bench.bench_models import sample_realistic

    picked: list[dict[str, Any]] = []
    for t, (task, shape, min_macs) in enumerate(TASKS):
        for arch in sample_realistic(random.Random(seed * 10 + t), shape, min_macs, per_task):
            picked.append({"task": task, "arch": arch.to_json(), "seed": seed * 1000 + len(picked)})
    return picked


@cache
def _harness_digest() -> str:
    """A hash of what besides the header decides a count: the harness, startup code and flags."""
    from searches.engine.deploy.toolchain import C_DIR

    digest = hashlib.sha256()
    for path in (
        C_DIR / "verify_qemu.c",
        C_DIR / "startup.S",
        C_DIR / "cortex_m.ld",
        ROOT / "searches/engine/deploy/toolchain.py",
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _key(header_text: str, target: str) -> str:
    """Counts are cached by the generated header itself: a kernel change re-emulates what it changes."""
    return hashlib.sha256(f"{_harness_digest()}\n{target}\n{header_text}".encode()).hexdigest()


@cache
def _profiler_digest() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "bench" / "latency_profile.py", ROOT / "bench" / "c" / "insn_marks.c"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _layers_key(header_text: str, target: str) -> str:
    """Per-layer counts depend on the profiler too (bench/latency_profile.py and its plugin)."""
    return hashlib.sha256(f"{_profiler_digest()}\n{_key(header_text, target)}".encode()).hexdigest()


def calibration_archs() -> list[dict[str, Any]]:
    return [item for seed, n in CALIBRATE_DRAWS for item in pick_archs(seed, n)]


def target_of(family: str, index: int) -> str:
    targets = FAMILY_TARGETS[family]
    return targets[index % len(targets)]


# Two stores of QEMU measurements, one JSON line per (generated header, target): whole-model
# instruction counts ("count", for --measure) and per-layer counts ("layers", for --calibrate).
STORES = {
    "count": (ROOT / "bench" / "results" / "latency" / "counts.jsonl", "instructions"),
    "layers": (ROOT / "bench" / "results" / "latency" / "layers.jsonl", "layers"),
}


def cache_file() -> Path:
    return STORES["count"][0]


def layers_file() -> Path:
    return STORES["layers"][0]


def _load(kind: str) -> dict[str, Any]:
    path, field = STORES[kind]
    stored: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                stored[row["key"]] = row[field]
    return stored


_STORED: dict[str, Any] = {}


def _init_worker(kind: str) -> None:
    _STORED.update(_load(kind))


def _measure_item(
    job: tuple[int, str, dict[str, Any], list[str]],
) -> tuple[int, list[tuple[str, str, Any, bool]]]:
    """(index, [(key, target, measurement, from the store)]) of one architecture on each target:
    its instructions of one inference (``bench_models._count``) or its per-layer counts
    (``latency_profile.profile_header``); emulated outputs must equal the integer reference."""
    from bench.bench_models import _count
    from bench.latency_profile import model_inputs, profile_header

    index, kind, item, targets = job
    header, xq, expected = model_inputs(item["arch"], item["seed"])
    out = []
    with tempfile.TemporaryDirectory(prefix="nasweb-bench-latency-") as tmp:
        for target in targets:
            key = (_key if kind == "count" else _layers_key)(header.text, target)
            if key in _STORED:
                out.append((key, target, _STORED[key], True))
            elif kind == "count":
                out.append((key, target, _count(header, xq, expected, target, Path(tmp))[0], False))
            else:
                out.append((key, target, profile_header(header, xq, expected, target, Path(tmp)), False))
    return index, out


def _collect(picked: list[dict[str, Any]], jobs: int, kind: str) -> list[dict[str, Any]]:
    """One row per (architecture, family) with its ``kind`` measurement (see STORES) under the
    row key ``kind``, emulating what the store lacks and appending it there."""
    path, field = STORES[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    work = [(i, kind, item, [target_of(f, i) for f in FAMILY_TARGETS]) for i, item in enumerate(picked)]
    results: list[list[tuple[str, str, Any, bool]]] = [[] for _ in picked]
    emulated = 0
    with Pool(jobs, initializer=_init_worker, initargs=(kind,)) as pool, path.open("a") as f:
        for done, (i, rows) in enumerate(pool.imap_unordered(_measure_item, work), 1):
            results[i] = rows
            for key, target, value, stored in rows:
                if not stored:
                    emulated += 1
                    f.write(json.dumps({"key": key, "target": target, field: value}) + "\n")
            f.flush()
            print(f"  {done}/{len(picked)} architectures ({emulated} runs emulated)", file=sys.stderr)
    return [
        {**item, "family": family, "target": target, kind: value}
        for i, item in enumerate(picked)
        for family, (_, target, value, _) in zip(FAMILY_TARGETS, results[i], strict=True)
    ]


def collect(picked: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    """Rows with each architecture's whole-model QEMU count under "count"."""
    return _collect(picked, jobs, "count")


def collect_layers(picked: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    """Rows with each architecture's per-layer QEMU counts under "layers"."""
    return _collect(picked, jobs, "layers")


# ---- fitting -----------------------------------------------------------------------------------


def layer_rows(row: dict[str, Any]) -> list[tuple[dict[str, float], float]]:
    """(features, counted instructions) of each layer of a profiled model and of its run
    function (bench/latency_profile.py counts everything a layer function ran)."""
    from searches.engine.resources.graph import build_graph
    from searches.engine.resources.latency import FAMILY_VARIANTS, layer_features, run_features
    from searches.engine.space.arch import from_json

    graph = build_graph(from_json(row["arch"]))[0]
    counts: dict[str, float] = row["layers"]
    return [(run_features(graph), counts["run"])] + [
        (feats, counts[op.id]) for op, feats in layer_features(graph, FAMILY_VARIANTS[row["family"]])
    ]


def fit_family(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Non-negative coefficients fitted to every layer of the profiled ``rows``.

    Each layer's error counts relative to its whole model's instructions, so what is minimised
    is the models' relative error, layer by layer: a layer's cost is fitted from the layers of
    its own op kind (every feature belongs to one), hundreds of them per kind."""
    import numpy as np
    from scipy.optimize import nnls

    feats, ys, totals = [], [], []
    for row in rows:
        total = sum(row["layers"].values())
        for f, y in layer_rows(row):
            feats.append(f)
            ys.append(y)
            totals.append(total)
    names = sorted({n for f in feats for n in f})
    t = np.array(totals)
    x = np.array([[f.get(n, 0.0) for n in names] for f in feats]) / t[:, None]
    scale = x.max(axis=0)  # columns of similar size keep NNLS well conditioned
    w, _ = nnls(x / scale, np.array(ys) / t, maxiter=50 * len(names))
    return {n: float(c / s) for n, c, s in zip(names, w, scale, strict=True) if c > 0}


def feature_rows(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    from searches.engine.resources.graph import build_graph
    from searches.engine.resources.latency import FAMILY_VARIANTS, features
    from searches.engine.space.arch import from_json

    return [features(build_graph(from_json(r["arch"]))[0], FAMILY_VARIANTS[r["family"]]) for r in rows]


def predict(coefs: dict[str, float], feats: dict[str, float]) -> float:
    return sum(coefs.get(n, 0.0) * v for n, v in feats.items())


def errors(coefs: dict[str, float], rows: list[dict[str, Any]]) -> list[float]:
    """Relative errors (prediction / QEMU count - 1) of whole models: ``rows`` with a "count"
    or with per-layer "layers" counts."""
    return [
        predict(coefs, f) / (r["count"] if "count" in r else sum(r["layers"].values())) - 1
        for f, r in zip(feature_rows(rows), rows, strict=True)
    ]


def summary(errs: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.abs(np.array(errs))
    return {
        "n": len(a),
        "median_abs_pct": float(np.median(a) * 100),
        "p90_abs_pct": float(np.percentile(a, 90) * 100),
        "max_abs_pct": float(a.max() * 100),
        "within_10_pct": float((a <= 0.10).mean() * 100),
    }


def calibrate(jobs: int) -> dict[str, Any]:
    """Fit every family on the calibration architectures and write the coefficients file."""
    from searches.engine.resources.latency import COEFFICIENTS_PATH, FAMILY_LABELS

    rows = collect_layers(calibration_archs(), jobs)
    families, fit_error = {}, {}
    for family in FAMILY_TARGETS:
        mine = [r for r in rows if r["family"] == family]
        families[family] = {n: round(c, 6) for n, c in sorted(fit_family(mine).items())}
        fit_error[family] = summary(errors(families[family], mine))
        print(FAMILY_LABELS[family], {k: round(v, 2) for k, v in fit_error[family].items()}, file=sys.stderr)
    data = {
        "command": CALIBRATE_COMMAND,
        "what": "instructions per event of the generated kernels' loops "
        "(searches/engine/resources/latency.py), fitted by non-negative least squares to QEMU "
        "instruction counts of every layer of one inference (bench/latency_profile.py), each "
        "layer's error relative to its model's count",
        "calibration": {
            "architectures": len(rows) // len(FAMILY_TARGETS),
            "draws": [{"seed": seed, "per_task": n} for seed, n in CALIBRATE_DRAWS],
            "targets": {f: list(t) for f, t in FAMILY_TARGETS.items()},
            "fit_error": fit_error,
        },
        "families": families,
    }
    COEFFICIENTS_PATH.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {COEFFICIENTS_PATH.relative_to(ROOT)}", file=sys.stderr)
    return data


def measure(jobs: int, seed: int = MEASURE_SEED) -> tuple[list[str], list[dict[str, Any]]]:
    """Held-out error of the checked-in model: the table's lines and the rows."""
    from searches.engine.resources.graph import build_graph
    from searches.engine.resources.latency import FAMILY_LABELS, predict_instructions
    from searches.engine.space.arch import from_json

    rows = collect(pick_archs(seed, MEASURE_PER_TASK), jobs)
    for r in rows:
        r["predicted"] = predict_instructions(build_graph(from_json(r["arch"]))[0], r["target"])
        r["error"] = r["predicted"] / r["count"] - 1
    lines = [
        "| core family (QEMU target) | models | median abs error | p90 | max | within ±10% | mean signed |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, targets in FAMILY_TARGETS.items():
        errs = [r["error"] for r in rows if r["family"] == family]
        s = summary(errs)
        mean = sum(errs) / len(errs) * 100
        lines.append(
            f"| {FAMILY_LABELS[family]} ({', '.join(targets)}) | {s['n']} | {s['median_abs_pct']:.1f}% "
            f"| {s['p90_abs_pct']:.1f}% | {s['max_abs_pct']:.1f}% | {s['within_10_pct']:.0f}% "
            f"| {mean:+.1f}% |"
        )
    return lines, rows


def write_measurement(lines: list[str], rows: list[dict[str, Any]], no_docs: bool) -> None:
    """Print the held-out table; unless ``no_docs``, write it to docs/benchmarks.md and resource-model.md."""
    import os

    from searches.engine.resources.latency import FAMILY_LABELS, coefficients

    per_family = len(rows) // len(FAMILY_TARGETS)
    missed = [
        FAMILY_LABELS[f]
        for f in FAMILY_TARGETS
        if any(abs(r["error"]) > 0.10 for r in rows if r["family"] == f)
    ]
    met = len(FAMILY_TARGETS) - len(missed)
    worst = max(rows, key=lambda r: abs(r["error"]))
    body = [
        f"Command: `{MEASURE_COMMAND}`; 1-minute load average {os.getloadavg()[0]:.1f} "
        "(instruction counts are exact, so the load does not matter).",
        "",
        f"{per_family} held-out random architectures of the μNAS space (seed {MEASURE_SEED}; the "
        f"coefficients were fitted on {coefficients()['calibration']['architectures']} others, seeds "
        f"{', '.join(str(seed) for seed, _ in CALIBRATE_DRAWS)}), {MEASURE_PER_TASK} for the digits input "
        f"(8x8x1) and {MEASURE_PER_TASK} "
        "for Fashion-MNIST (28x28x1), kept when peak SRAM and flash are at most 64,000 B and MACs "
        "between 2,000 (digits) or 20,000 (Fashion) and 3M; random weights.  Each is exported and "
        "its instructions of one inference counted under QEMU on every core family (the M4/M7 family "
        "alternates between the two cores); the calibrated model predicts the count from the op "
        "graph alone.  Error = predicted / counted - 1.",
        "",
        *lines,
        "",
        f"Largest miss: {worst['error'] * 100:+.1f}% on {worst['target']} ({worst['task']}, "
        f"{worst['count']:,.0f} instructions counted, {worst['predicted']:,.0f} predicted).",
        "",
        f"Goal: every held-out model within ±10%. Met for {met} of {len(FAMILY_TARGETS)} core families"
        + (f" (not for {', '.join(missed)})." if missed else "."),
    ]
    text = "\n".join(body)
    print(f"## {TITLE}\n\n{text}")
    if no_docs:
        return
    from bench._report import replace_section

    replace_section(ROOT / "docs" / "benchmarks.md", TITLE, text)
    replace_section(ROOT / "docs" / "resource-model.md", "Latency: measured error", text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--calibrate", action="store_true", help="emulate, fit and write the coefficients")
    mode.add_argument("--measure", action="store_true", help="held-out error table")
    mode.add_argument("--collect", choices=("calibrate", "measure"), help="only emulate (fill the cache)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel emulation processes (default 2)")
    parser.add_argument("--no-docs", action="store_true", help="print only, do not touch docs/")
    parser.add_argument(
        "--seed",
        type=int,
        default=MEASURE_SEED,
        help=f"--measure: the held-out draw (default {MEASURE_SEED}; another one only prints)",
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.collect:
        picked = (
            calibration_archs() if args.collect == "calibrate" else pick_archs(MEASURE_SEED, MEASURE_PER_TASK)
        )
        collect(picked, args.jobs)
    elif args.calibrate:
        calibrate(args.jobs)
    else:
        lines, rows = measure(args.jobs, args.seed)
        write_measurement(lines, rows, args.no_docs or args.seed != MEASURE_SEED)


if __name__ == "__main__":
    main()
