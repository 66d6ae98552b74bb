"""From a trained candidate to what runs on the board, and the proof that it does.

Owns the int8 model (:mod:`.int8`; its arithmetic is
:mod:`searches.engine.training.int8_scheme`, shared with quantisation-aware training),
post-training quantisation (:mod:`.quantize`), the integer reference (:mod:`.reference`), the
C header and its kernels in ``c/`` (:mod:`.header`), the downloadable bundle (:mod:`.bundle`),
the host and Arm toolchains (:mod:`.toolchain`), QEMU (:mod:`.qemu`) and the export
verification (:mod:`.verify`).  May import ``space``, ``resources`` and ``training``, never
``strategies``.
"""
