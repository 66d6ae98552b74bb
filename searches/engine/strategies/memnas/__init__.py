"""MemNAS (Liu et al., CVPR 2020): grow-and-trim rounds ranked by a learned controller.

:mod:`.edits` makes a backbone's grow and trim children, :mod:`.controller` is the ranking
model, :mod:`.strategy` the ask/tell strategy with the memory-efficiency score.
"""
