"""The NAS core: plain typed Python, numpy and torch, no web framework and no task queue.

Five sub-packages, each importing only those listed before it (import-linter checks it):

* :mod:`~searches.engine.space` — the architecture format and μNAS's search space: the
  versioned JSON format and validation, random sampling, morphisms, the sparsity gene;
* :mod:`~searches.engine.resources` — what a candidate costs on a microcontroller: its int8
  operator graph, the exact peak-SRAM planner, the arena, the resource report and latency;
* :mod:`~searches.engine.training` — data sets, the float model and its training, DPF
  structured pruning (may use ``space`` and ``resources``);
* :mod:`~searches.engine.strategies` — the ask/tell search interface and its strategies (aging
  evolution, random search, MemNAS); they never train anything themselves (may use ``space``
  and ``resources``, not ``training``);
* :mod:`~searches.engine.deploy` — int8 quantisation and its integer reference, the C header,
  the bundle, the toolchain and QEMU, the export verification (may use ``space``,
  ``resources`` and ``training``, never ``strategies``).

The web layer talks to the engine through arguments: random generators, callbacks, plain
data; the engine never imports django, celery, channels or the rest of ``searches``.
"""
