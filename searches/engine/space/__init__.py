"""The architecture format and μNAS's search space.

Owns the typed, versioned architecture (:mod:`.arch`, with its JSON schema), the sampler's
settings and random architectures (:mod:`.sampling`), single-edit morphisms
(:mod:`.morphisms`) and the sparsity gene (:mod:`.sparsity`).  Imports nothing else of the
engine: every other package builds on it.
"""
