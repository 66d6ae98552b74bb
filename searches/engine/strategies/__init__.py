"""Search strategies behind one ask/tell interface, each with an exact JSON state.

Owns the search settings (:mod:`.config`, strategy-specific ones in :mod:`.options`), the
interface with its proposals, results and members (:mod:`.base`), μNAS's objective and Pareto
fronts (:mod:`.objectives`), aging evolution (:mod:`.aging`), random search
(:mod:`.random_search`), MemNAS (:mod:`.memnas`), the name → class registry
(:mod:`.registry`) and a sequential driver (:mod:`.driver`).  Strategies propose and rank;
callers train.  May import :mod:`searches.engine.space` and :mod:`searches.engine.resources`,
never ``training`` or ``deploy``.
"""
