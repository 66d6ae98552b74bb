"""Data sets and training: the float model of a candidate, its training and DPF pruning.

Owns the data-set loaders and validation (:mod:`.datasets`), the PyTorch model of an
architecture (:mod:`.model`), deterministic CPU training and weights on disk (:mod:`.train`),
DPF masks and their schedule (:mod:`.dpf`), physical channel removal and fitting a profile
(:mod:`.shrink`), the pruning job (:mod:`.pruning`), the int8 scheme's arithmetic that
deploy shares (:mod:`.int8_scheme`), augmentation (:mod:`.augment`), quantisation-aware
training (:mod:`.qat`) and training for deployment (:mod:`.deployment`).  May import
:mod:`searches.engine.space` and :mod:`searches.engine.resources`.
"""
