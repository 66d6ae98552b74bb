"""Data sets and training: the float model of a candidate, its training and DPF pruning.

Owns the data-set loaders and validation (:mod:`.datasets`), the PyTorch model of an
architecture (:mod:`.model`), deterministic CPU training and weights on disk (:mod:`.train`),
DPF masks and their schedule (:mod:`.dpf`), physical channel removal and fitting a profile
(:mod:`.shrink`) and the pruning job (:mod:`.pruning`).  May import
:mod:`searches.engine.space` and :mod:`searches.engine.resources`.
"""
