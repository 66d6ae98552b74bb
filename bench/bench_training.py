"""CPU training benchmark: the speed knobs behind training.py's defaults, and search throughput.

Usage::

    python bench/bench_training.py [--sections knobs,parallel,throughput] [--reps 5] [--no-docs]

``--sections all`` also runs the accuracy studies (optimiser, batch size, fidelity; about
40 extra minutes on 2 cores).  The ``## Training throughput`` section of docs/benchmarks.md
is rewritten unless ``--no-docs`` is given.  Timings are the minimum over interleaved
repetitions (the median is printed beside it): on a shared machine the minimum is the
least-disturbed estimate of what the code itself costs.  Accuracies are exactly
reproducible (one thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import queue
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F

from bench._report import replace_section
from searches.engine.space.arch import Architecture, ConvBlock, ConvLayer, Dense, Pooling
from searches.engine.training.datasets import Dataset, load_dataset
from searches.engine.training.model import ConvUnit, build_model, to_nchw
from searches.engine.training.train import (
    Fidelity,
    accuracy,
    default_threads,
    train_and_evaluate,
    usable_cores,
)

DOCS = ROOT / "docs" / "benchmarks.md"
TITLE = "Training throughput"
Row = tuple[str, ...]

# ---- the fixed candidate list ----------------------------------------------------------


def _c(filters: int, kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv2d", kernel=kernel, filters=filters, stride=stride, **kw)  # type: ignore[arg-type]


def _pw(filters: int, **kw: object) -> ConvLayer:
    return ConvLayer(op="conv1x1", kernel=1, filters=filters, **kw)  # type: ignore[arg-type]


def _dw(kernel: int = 3, stride: int = 1, **kw: object) -> ConvLayer:
    return ConvLayer(op="dwconv2d", kernel=kernel, filters=None, stride=stride, **kw)  # type: ignore[arg-type]


def _arch(blocks: list[ConvBlock], pooling: Pooling | None, dense: tuple[int, ...] = ()) -> Architecture:
    return Architecture((28, 28, 1), 10, tuple(blocks), pooling, tuple(Dense(u) for u in dense))


def candidates() -> dict[str, Architecture]:
    """Eight fixed Fashion-MNIST candidates spanning the μNAS space (tiny to medium, every op)."""
    B = ConvBlock
    return {
        "tiny": _arch([B((_c(8, stride=2),)), B((_c(16, stride=2),))], Pooling("avg", "global")),
        "lenet": _arch(
            [
                B((_c(6, 5, padding="valid", batchnorm=False),)),
                B((_c(16, 5, padding="valid", pre_pool=True),)),
            ],
            Pooling("max", 2),
            (120, 84),
        ),
        "separable": _arch(
            [B((_c(16, stride=2),)), B((_dw(), _pw(32))), B((_dw(stride=2), _pw(64)))],
            Pooling("avg", "global"),
        ),
        "branchy": _arch(
            [
                B((_c(16),)),
                B((_c(16, stride=2),)),
                B((_pw(16, pre_pool=True),), branch=True),
                B((_c(32, stride=2),)),
            ],
            Pooling("avg", 2),
            (64,),
        ),
        "wide": _arch(
            [B((_c(32),)), B((_c(32, pre_pool=True),)), B((_c(64, pre_pool=True),))],
            Pooling("max", 2),
            (128,),
        ),
        "nopool": _arch([B((_c(8, 5, stride=2, padding="valid"),)), B((_c(16, stride=2),))], None, (32,)),
        "deep": _arch(
            [
                B((_c(12),)),
                B((_c(12, stride=2),)),
                B((_dw(5), _pw(24))),
                B((_c(24, stride=2),)),
                B((_dw(), _pw(32))),
                B((_c(32),)),
            ],
            Pooling("max", "global"),
        ),
        "nobn": _arch(
            [
                B((_c(16, batchnorm=False),)),
                B((_c(32, stride=2, batchnorm=False),)),
                B((_c(32, stride=2, batchnorm=False),)),
            ],
            Pooling("avg", "global"),
            (32,),
        ),
    }


KNOB_ARCHS = ("tiny", "separable", "wide")  # small, depthwise-heavy and dense-conv-heavy
STUDY_ARCHS = ("tiny", "separable", "lenet", "nobn")
KNOB_SAMPLES = 1024

# ---- timing helpers --------------------------------------------------------------------


def _interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per setting; one run of every setting per round, so drift hits all."""
    for fn in fns.values():
        fn()  # warm-up: oneDNN builds its kernels for each new shape on first use
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def _rows(res: dict[str, tuple[float, float]], items: int) -> list[Row]:
    return [(k, f"{items / best:,.0f}", f"{best:.2f} / {med:.2f}") for k, (best, med) in res.items()]


def _chain(fns: list[Callable[[], None]]) -> Callable[[], None]:
    def run() -> None:
        for fn in fns:
            fn()

    return run


def _train_tensors(ds: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return to_nchw(ds.x_train[:n]).contiguous(), torch.from_numpy(ds.y_train[:n])


def _explicit_pads(model: torch.nn.Module) -> None:
    """Move symmetric padding out of the conv into F.pad (the straightforward lowering)."""
    for unit in model.modules():
        if isinstance(unit, ConvUnit) and unit.conv.padding != (0, 0):
            top, left = int(unit.conv.padding[0]), int(unit.conv.padding[1])
            unit.pad = (left, left, top, top)
            unit.conv.padding = (0, 0)


def _steps_fn(
    arch: Architecture,
    data: tuple[torch.Tensor, torch.Tensor],
    bs: int,
    *,
    channels_last: bool = False,
    opt_impl: str = "fused",
    explicit_pad: bool = False,
) -> Callable[[], None]:
    """A closure training ``arch`` on KNOB_SAMPLES samples with the given implementation choices."""
    x, y = data
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(arch).to(memory_format=fmt)  # type: ignore[call-overload]
    if explicit_pad:
        _explicit_pads(model)
    impl = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(opt_impl, {"foreach": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **impl)  # type: ignore[arg-type]
    xs = x.contiguous(memory_format=fmt)
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(KNOB_SAMPLES // bs):
            idx = perm[i * bs : (i + 1) * bs]
            _step(model, opt, xs[idx], y[idx])

    return run


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _knob_work(data: tuple[torch.Tensor, torch.Tensor], bs: int = 64, **kw: object) -> Callable[[], None]:
    archs = candidates()
    return _chain([_steps_fn(archs[a], data, bs, **kw) for a in KNOB_ARCHS])  # type: ignore[arg-type]


# ---- speed knobs (one thread) --------------------------------------------------------------


def knob_batch_layout(data: tuple[torch.Tensor, torch.Tensor], reps: int) -> list[Row]:
    """Training samples/s for batch size x memory format."""
    fns: dict[str, Callable[[], object]] = {}
    for bs in (32, 64, 128, 256):
        for cl in (False, True):
            fns[f"batch {bs}, {'channels_last' if cl else 'NCHW contiguous'}"] = _knob_work(
                data, bs, channels_last=cl
            )
    return _rows(_interleaved(fns, reps), KNOB_SAMPLES * len(KNOB_ARCHS))


def knob_kernels(data: tuple[torch.Tensor, torch.Tensor], reps: int) -> list[Row]:
    """Symmetric 'same' padding by F.pad vs by the conv; AdamW's three implementations."""
    fns: dict[str, Callable[[], object]] = {
        "conv pads symmetric 'same', AdamW fused (default)": _knob_work(data),
        "F.pad for every 'same' pad, AdamW fused": _knob_work(data, explicit_pad=True),
        "conv pads, AdamW foreach": _knob_work(data, opt_impl="foreach"),
        "conv pads, AdamW for-loop": _knob_work(data, opt_impl="loop"),
    }
    return _rows(_interleaved(fns, reps), KNOB_SAMPLES * len(KNOB_ARCHS))


def knob_deterministic(data: tuple[torch.Tensor, torch.Tensor], reps: int) -> list[Row]:
    """torch.use_deterministic_algorithms(True): step cost, and its first call in a fresh process."""
    work = _knob_work(data)

    def with_flag(flag: bool) -> Callable[[], None]:
        def run() -> None:
            torch.use_deterministic_algorithms(flag)
            try:
                work()
            finally:
                torch.use_deterministic_algorithms(False)

        return run

    fns: dict[str, Callable[[], object]] = {
        "use_deterministic_algorithms(True)": with_flag(True),
        "use_deterministic_algorithms(False) (default)": with_flag(False),
    }
    rows = _rows(_interleaved(fns, reps), KNOB_SAMPLES * len(KNOB_ARCHS))
    code = (
        "import time, torch; t = time.perf_counter(); torch.use_deterministic_algorithms(True); "
        "print(time.perf_counter() - t)"
    )
    first = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    )
    rows.append((f"first use_deterministic_algorithms call in a new process: {first:.1f} s", "-", "-"))
    return rows


def knob_pipeline(data: tuple[torch.Tensor, torch.Tensor], reps: int) -> list[Row]:
    """One pass over 4096 samples: pre-loaded tensors indexed by a permutation vs a DataLoader."""
    x, y = data
    bs = 64
    torch.manual_seed(0)
    model = build_model(candidates()["tiny"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)

    def permutation() -> None:
        perm = torch.randperm(len(y))
        for i in range(len(y) // bs):
            idx = perm[i * bs : (i + 1) * bs]
            _step(model, opt, x[idx], y[idx])

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=bs, shuffle=True)

    def dataloader() -> None:
        for xb, yb in loader:
            _step(model, opt, xb, yb)

    fns: dict[str, Callable[[], object]] = {
        "data: pre-loaded tensors, permutation index (default)": permutation,
        "data: DataLoader(TensorDataset, shuffle=True)": dataloader,
    }
    return _rows(_interleaved(fns, reps), len(y))


def knob_eval(ds: Dataset, reps: int) -> list[Row]:
    """Evaluating the 10,000 test images: inference_mode vs no_grad vs autograd on; batch size."""
    x, y = to_nchw(ds.x_test).contiguous(), torch.from_numpy(ds.y_test)
    torch.manual_seed(0)
    model = build_model(candidates()["separable"]).eval()

    def plain(bs: int) -> Callable[[], None]:
        def run() -> None:
            for s in range(0, len(y), bs):
                model(x[s : s + bs]).argmax(1)

        return run

    def no_grad(bs: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                plain(bs)()

        return run

    fns: dict[str, Callable[[], object]] = {
        "eval: autograd on, batch 500": plain(500),
        "eval: no_grad, batch 500": no_grad(500),
        **{
            f"eval: inference_mode, batch {bs}": _acc_fn(model, x, y, bs)
            for bs in (100, 250, 500, 1000, 2500)
        },
    }
    return _rows(_interleaved(fns, reps), len(y))


def _acc_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> Callable[[], object]:
    return lambda: accuracy(model, x, y, bs)


def knob_compile(data: tuple[torch.Tensor, torch.Tensor]) -> list[Row]:
    """torch.compile: one-off compile time against the per-step gain, on one candidate."""
    x, y = data
    rows: list[Row] = []
    for name in ("eager", "torch.compile"):
        torch.manual_seed(0)
        model = build_model(candidates()["separable"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        try:
            net = torch.compile(model) if name == "torch.compile" else model
            t0 = time.perf_counter()
            _step(net, opt, x[:64], y[:64])  # type: ignore[arg-type]
            first = time.perf_counter() - t0

            def run(net: object = net, opt: torch.optim.Optimizer = opt) -> None:
                for i in range(KNOB_SAMPLES // 64):
                    _step(net, opt, x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64])  # type: ignore[arg-type]

            best, med = _interleaved({name: run}, 3)[name]
            rows.append(
                (
                    f"{name} (first step {first:.1f} s)",
                    f"{KNOB_SAMPLES / best:,.0f}",
                    f"{best:.2f} / {med:.2f}",
                )
            )
        except Exception as exc:  # report why compile is unusable here, don't abort the benchmark
            rows.append((f"{name}: failed ({type(exc).__name__})", "-", "-"))
    return rows


# ---- worker processes (JSON over pipes: nothing is pickled between processes) ---------------


class Worker:
    """A ``bench_training.py --worker`` subprocess that takes one JSON command per stdin line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one command and wait for its one-line JSON reply."""
        self.send(msg)
        return self.recv()

    def recv(self) -> dict[str, Any]:
        """The worker's next JSON line."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, msg: dict[str, Any]) -> None:
        """Send one command without waiting."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """End the worker (EOF on its stdin)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def worker_main() -> None:
    """The ``--worker`` loop: load, eval and steps commands, one JSON reply line each."""
    torch.set_num_threads(default_threads())
    ds = load_dataset("fashion-mnist")
    while line := sys.stdin.readline():
        msg = json.loads(line)
        reply: dict[str, Any] = {}
        if msg["cmd"] == "eval":
            r = train_and_evaluate(candidates()[msg["arch"]], ds, Fidelity(**msg["fidelity"]))
            reply = {
                "val": r.val_accuracy,
                "test": r.test_accuracy,
                "seconds": r.total_seconds,
                "params": r.params,
            }
        elif msg["cmd"] == "steps":
            torch.set_num_threads(msg["threads"])
            work = _knob_work(_train_tensors(ds, 4096))
            work()
            print(json.dumps({"ready": True}), flush=True)
            sys.stdin.readline()  # the "go" that starts every worker at once
            t = time.perf_counter()
            for _ in range(msg["reps"]):
                work()
            reply = {"elapsed": time.perf_counter() - t}
        print(json.dumps(reply), flush=True)


def evaluate_many(jobs: list[tuple[str, Fidelity]], procs: int) -> tuple[list[dict[str, Any]], float]:
    """Train (candidate, fidelity) jobs on ``procs`` one-thread workers; results and wall seconds.

    Workers are started and have the dataset loaded before the clock starts.
    """
    results: list[dict[str, Any]] = [{} for _ in jobs]
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    ready = threading.Barrier(procs)
    spans: list[tuple[float, float]] = []

    def drive() -> None:
        worker = Worker()
        try:
            worker.ask({"cmd": "load"})
            ready.wait()
            t0 = time.perf_counter()
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    break
                name, fid = jobs[i]
                results[i] = worker.ask({"cmd": "eval", "arch": name, "fidelity": asdict(fid)})
                print(f"  {name} {fid}: {results[i]}", file=sys.stderr, flush=True)
            spans.append((t0, time.perf_counter()))
        finally:
            worker.close()

    with ThreadPoolExecutor(procs) as pool:
        for f in [pool.submit(drive) for _ in range(procs)]:
            f.result()
    return results, max(e for _, e in spans) - min(s for s, _ in spans)


def _load() -> str:
    """The 1-minute load average: how busy the shared machine was."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def _parallel_once(procs: int, threads: int, rounds: int) -> float:
    """Summed samples/s of ``procs`` workers with ``threads`` threads each, started together."""
    workers = [Worker() for _ in range(procs)]
    try:
        for w in workers:
            w.send({"cmd": "steps", "threads": threads, "reps": rounds})
        for w in workers:
            assert w.recv() == {"ready": True}
        for w in workers:
            w.send({"cmd": "go"})
        wall = max(w.recv()["elapsed"] for w in workers)
    finally:
        for w in workers:
            w.close()
    return procs * rounds * KNOB_SAMPLES * len(KNOB_ARCHS) / wall


def knob_parallel(reps: int) -> list[Row]:
    """Processes x threads per process, all running at once: best and median of ``reps`` tries each."""
    cores = usable_cores()
    layouts = ((1, 1), (1, cores), (cores, 1), (cores, cores))
    rates: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts}
    loads = [float(_load())]
    for _ in range(reps):
        for procs, threads in layouts:
            rates[(procs, threads)].append(_parallel_once(procs, threads, 2))
            loads.append(float(_load()))
            print(procs, threads, f"{rates[(procs, threads)][-1]:,.0f}", loads[-1], flush=True)
    base = max(rates[(1, 1)])
    rows: list[Row] = []
    for (procs, threads), r in rates.items():
        label = f"{procs} process{'es' if procs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        rows.append((label, f"{max(r):,.0f}", f"{statistics.median(r):,.0f}", f"{max(r) / base:.2f}x"))
    rows.append(("(1-minute load average during the runs)", f"{min(loads):.2f} to {max(loads):.2f}", "", ""))
    return rows


# ---- accuracy studies ------------------------------------------------------------------------


def _study(jobs: list[tuple[str, Fidelity]]) -> list[dict[str, Any]]:
    return evaluate_many(jobs, usable_cores())[0]


def optimizer_study(base: Fidelity) -> list[Row]:
    """Mean validation accuracy at ``base`` for optimiser x learning rate x weight decay."""
    settings: list[tuple[str, float, float]] = [
        ("adamw", 3e-3, 1e-4),
        ("adamw", 1e-2, 1e-4),
        ("adamw", 2e-2, 1e-4),
        ("adamw", 3e-2, 1e-4),
        ("adamw", 5e-2, 1e-4),
        ("adamw", 2e-2, 1e-2),
        ("sgd", 0.05, 5e-4),
        ("sgd", 0.1, 5e-4),
    ]
    fids = [replace(base, optimizer=o, lr=lr, weight_decay=wd) for o, lr, wd in settings]  # type: ignore[arg-type]
    names = list(candidates())
    res = _study([(n, f) for f in fids for n in names])
    rows: list[Row] = []
    for k, (opt, lr, wd) in enumerate(settings):
        accs = [r["val"] for r in res[k * len(names) : (k + 1) * len(names)]]
        label = f"{'AdamW' if opt == 'adamw' else 'SGD, Nesterov 0.9'} lr={lr:g} wd={wd:g}"
        rows.append((label, f"{np.mean(accs):.4f}", f"{min(accs):.3f}"))
    return rows


def batch_study(base: Fidelity) -> list[Row]:
    """Mean validation accuracy and seconds per candidate for each batch size at ``base``."""
    sizes = (32, 64, 128, 256)
    names = list(candidates())
    res = _study([(n, replace(base, batch_size=bs)) for bs in sizes for n in names])
    rows: list[Row] = []
    for k, bs in enumerate(sizes):
        part = res[k * len(names) : (k + 1) * len(names)]
        rows.append(
            (
                f"batch {bs}",
                f"{np.mean([r['val'] for r in part]):.4f}",
                f"{np.mean([r['seconds'] for r in part]):.1f}",
            )
        )
    return rows


def fidelity_levels(base: Fidelity) -> list[Fidelity]:
    """Cheaper and dearer settings around the default; the last is the reference."""
    return [
        replace(base, epochs=1, train_subset=10000),
        replace(base, epochs=2, train_subset=10000),
        replace(base, epochs=3, train_subset=10000),
        replace(base, epochs=3, train_subset=20000),
        replace(base, epochs=5, train_subset=20000),
    ]


def fidelity_study(base: Fidelity) -> list[Row]:
    """Mean accuracy, seconds, and rank agreement with the dearest level, over all candidates."""
    names = list(candidates())
    levels = fidelity_levels(base)
    res = _study([(n, f) for f in levels for n in names])
    per_level = [res[k * len(names) : (k + 1) * len(names)] for k in range(len(levels))]
    reference = [r["val"] for r in per_level[-1]]
    rows: list[Row] = []
    for fid, part in zip(levels, per_level, strict=True):
        accs = [r["val"] for r in part]
        rows.append(
            (
                f"{fid.epochs} epoch{'s' if fid.epochs > 1 else ''} x {fid.train_subset or 'all'} samples",
                f"{np.mean(accs):.4f}",
                f"{statistics.median(r['seconds'] for r in part):.1f}",
                f"{_spearman(accs, reference):.2f}",
            )
        )
    return rows


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


# ---- throughput at the default fidelity ------------------------------------------------------


def throughput(fid: Fidelity) -> tuple[list[Row], list[str]]:
    """Every candidate at ``fid``, one at a time and then one worker per core; table and summary."""
    names = list(candidates())
    jobs = [(n, fid) for n in names]
    seq, _ = evaluate_many(jobs, 1)
    cores = usable_cores()
    par, wall = evaluate_many(jobs, cores)
    same = all((p["val"], p["test"]) == (s["val"], s["test"]) for p, s in zip(par, seq, strict=True))
    secs = [s["seconds"] for s in seq]
    tests = [s["test"] for s in seq]
    table: list[Row] = [
        (n, f"{s['params']:,}", f"{s['seconds']:.1f}", f"{s['val']:.4f}", f"{s['test']:.4f}")
        for n, s in zip(names, seq, strict=True)
    ]
    summary = [
        f"One evaluation at a time (1 thread): median **{statistics.median(secs):.1f} s** per candidate "
        f"(mean {np.mean(secs):.1f} s) = **{3600 / statistics.median(secs):.0f} evaluations per CPU-hour**.",
        f"{cores} one-thread evaluations side by side: {len(names)} candidates in {wall:.0f} s = "
        f"**{3600 * len(names) / wall:.0f} evaluations per hour on this {cores}-core machine** "
        f"(accuracies {'identical to' if same else 'DIFFERENT from'} the one-at-a-time run).",
        f"Test accuracy at this fidelity: median **{statistics.median(tests):.4f}**, "
        f"best **{max(tests):.4f}**.",
    ]
    return table, summary


# ---- report ----------------------------------------------------------------------------


def _table(header: Row, rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machine() -> str:
    """The CPU, usable cores and software versions."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {usable_cores()} cores usable, torch {torch.__version__}, "
        f"CPython {platform.python_version()}"
    )


SECTIONS = ("knobs", "parallel", "optimizer", "batch", "fidelity", "throughput")
# Subsection titles start with these, in report order.
SUBSECTIONS = (
    "### Speed knobs",
    "### Threads and processes",
    "### Optimiser",
    "### Batch size",
    "### Fidelity",
    "### Candidate evaluations",
)
DEFAULTS_NOTE = (
    "**Defaults chosen from these numbers** (searches/engine/training/train.py): one intra-op thread per "
    "evaluation, one evaluation per core; batch 64; NCHW contiguous; whole tensors pre-loaded and "
    "indexed by a seeded permutation; fused AdamW with 5% warm-up and cosine decay; symmetric "
    "'same' padding done by the conv (F.pad only where TensorFlow pads asymmetrically); evaluation "
    "under inference_mode in batches of 250; no use_deterministic_algorithms (not needed on the CPU, "
    "costly to import); no torch.compile."
)


def run_sections(ds: Dataset, sections: set[str], reps: int) -> list[str]:
    """The markdown body for the selected sections."""
    out: list[str] = []
    fid = Fidelity()
    if "knobs" in sections:
        torch.set_num_threads(1)
        data = _train_tensors(ds, 4096)
        rows = knob_batch_layout(data, reps) + knob_kernels(data, reps) + knob_deterministic(data, reps)
        rows += knob_pipeline(data, reps) + knob_eval(ds, reps) + knob_compile(data)
        out += [
            "### Speed knobs (one thread)",
            "",
            f"Training rows: AdamW steps over {KNOB_SAMPLES} samples on each of {', '.join(KNOB_ARCHS)} "
            "(batch 64 unless stated). Eval rows: the 10,000 test images through 'separable'. Compare rows "
            "within a group (they ran interleaved); between groups the machine's load differed.",
            "",
            *_table(("setting", "samples/s (best)", "seconds best / median"), rows),
            "",
        ]
    if "parallel" in sections:
        out += [
            "### Threads and processes",
            "",
            "The training workload above (2 rounds per try), run by every process at the same time; "
            "samples/s summed over the processes. Other jobs on this shared machine take cores too, "
            "which is what makes oversubscribed OpenMP threads collapse.",
            "",
            *_table(
                ("layout", "samples/s (best)", "samples/s (median)", "best vs 1 x 1"),
                knob_parallel(max(3, reps // 2)),
            ),
            "",
        ]
    torch.set_num_threads(default_threads())
    if "optimizer" in sections:
        out += [
            f"### Optimiser (val accuracy at {fid.epochs} epochs x {fid.train_subset} samples, batch "
            f"{fid.batch_size}; warm-up + cosine schedule)",
            "",
            *_table(("optimiser", "mean val acc", "worst candidate"), optimizer_study(fid)),
            "",
        ]
    if "batch" in sections:
        out += [
            "### Batch size (same epochs: larger batches take fewer steps)",
            "",
            *_table(("batch", "mean val acc", "mean s/candidate"), batch_study(fid)),
            "",
        ]
    if "fidelity" in sections:
        header = ("fidelity", "mean val acc", "median s/candidate", "rank correlation with 5 epochs x 20000")
        out += [
            "### Fidelity (all 8 candidates)",
            "",
            *_table(header, fidelity_study(fid)),
            "",
            "Spearman rank correlation of the candidates' validation accuracies. Eight dissimilar "
            "candidates are easy to rank; close relatives in a search are harder, which is why the default "
            "is not the cheapest level.",
            "",
        ]
    if "throughput" in sections:
        table, summary = throughput(fid)
        out += [
            "### Candidate evaluations per CPU-hour (Fashion-MNIST, default fidelity)",
            "",
            f"`{fid}`",
            "",
            *_table(("candidate", "params", "seconds", "val acc", "test acc"), table),
            "",
            *[f"- {line}" for line in summary],
            "",
        ]
    return out


def merge_subsections(old: str, new: str) -> str:
    """``new``'s ``### `` subsections replace same-titled ones in ``old``; the rest of ``old`` stays."""

    def split(text: str) -> tuple[str, dict[str, str]]:
        parts = re.split(r"^(?=### )", text, flags=re.M)
        return parts[0], {p.splitlines()[0]: p.rstrip() + "\n" for p in parts[1:]}

    _, old_subs = split(old)
    head, new_subs = split(new)
    merged = {**old_subs, **new_subs}
    # Keep the report's order: subsections in the order this benchmark runs them.
    order = sorted(merged, key=lambda t: next((i for i, key in enumerate(SUBSECTIONS) if key in t), 99))
    return head.rstrip() + "\n\n" + "\n".join(merged[t] for t in order)


def current_section() -> str:
    """This benchmark's section of docs/benchmarks.md as it stands (empty if absent)."""
    text = DOCS.read_text() if DOCS.exists() else ""
    match = re.search(rf"^## {re.escape(TITLE)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    return match.group(1) if match else ""


def main() -> None:
    """Run the selected sections, print them, and update this benchmark's docs section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections", default="knobs,parallel,throughput", help=f"comma list of {SECTIONS} or all"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main()
        return
    sections = set(SECTIONS) if args.sections == "all" else set(args.sections.split(","))
    start = time.perf_counter()
    body = run_sections(load_dataset("fashion-mnist"), sections, args.reps)
    load = _load()
    head = [
        "Command: `python bench/bench_training.py` (speed knobs, threads and processes, throughput) and "
        "`python bench/bench_training.py --sections optimizer,batch,fidelity` (accuracy studies); "
        f"machine: {machine()}. The machine is shared with other jobs, so timings are best-of-N "
        "(medians beside them); accuracies are exactly reproducible.",
        "",
        DEFAULTS_NOTE,
        "",
        f"<!-- last run: --sections {args.sections}, {(time.perf_counter() - start) / 60:.0f} min, "
        f"1-minute load average {load} at the end -->",
        "",
    ]
    text = "\n".join(head + body)
    print(text)
    if not args.no_docs:
        # Re-read just before writing: other benchmarks write their own sections of this file.
        replace_section(DOCS, TITLE, merge_subsections(current_section(), text))


if __name__ == "__main__":
    main()
