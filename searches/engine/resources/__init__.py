"""What a candidate costs on a microcontroller, computed before it is trained.

Owns the int8 operator graph an architecture lowers to (:mod:`.opgraph`, :mod:`.graph`), the
exact peak-SRAM planner over execution orders (:mod:`.memory`, with the fork-join solver in
:mod:`.chains`), the static arena (:mod:`.arena`), the resource report (:mod:`.report`) and
the per-core latency model (:mod:`.latency`).  May import :mod:`searches.engine.space` only.
"""
