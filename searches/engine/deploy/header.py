"""Generate the self-contained C99 header of a quantised candidate (stb style).

The header declares the API always and defines it under ``#define <NAME>_IMPLEMENTATION``:
the constant arrays (placed in flash, aligned), the int8 kernels the model uses (copied from
``c/kernels.h`` with their prefix renamed), one static arena, and ``<name>_run``, which runs
the ops in the resource model's optimal order at the arena planner's fixed offsets.  The
arena is :attr:`ResourceReport.peak_sram_bytes` and the arrays' bytes are its flash, by
construction; :func:`generate_header` checks both and fails loudly if they ever diverge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from searches.engine.deploy.int8 import QuantModel
from searches.engine.resources.opgraph import Op
from searches.engine.resources.report import ResourceReport, analyze
from searches.engine.space.arch import same_padding
from searches.engine.training.int8_scheme import add_chain

KERNELS_PATH = Path(__file__).resolve().parent / "c" / "kernels.h"
VALUES_PER_LINE = 20
# Template sections each op kind needs ("requant" with the shared helpers always comes first).
_KERNELS_FOR_OP = {
    "conv2d": ("dot22", "conv2d"),
    "conv1x1": ("dot22", "conv1x1"),
    "dwconv2d": ("dwconv2d",),
    "dense": ("dense",),
    "maxpool": ("maxpool",),
    "avgpool": ("avgpool",),
    "add": ("add",),
}
_SECTION_ORDER = ("requant", "dot22", "conv2d", "conv1x1", "dwconv2d", "dense", "maxpool", "avgpool", "add")


class ExportError(RuntimeError):
    """The generated code would not match the resource model (a bug, never a user error)."""


@dataclass(frozen=True)
class CHeader:
    """A generated header and the numbers it was built to."""

    text: str
    name: str
    arena_bytes: int
    flash_bytes: int
    macs: int

    @property
    def filename(self) -> str:
        return f"{self.name}.h"


def c_identifier(text: str) -> str:
    """A lowercase C identifier made from ``text`` (letters, digits, underscores; no leading digit)."""
    ident = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower()
    if not ident:
        raise ValueError(f"cannot make a C identifier from {text!r}")
    return f"m_{ident}" if ident[0].isdigit() else ident


# ---- kernel template -----------------------------------------------------------------


def _template_sections() -> tuple[str, dict[str, str]]:
    text = KERNELS_PATH.read_text()
    prelude, _, rest = text.partition("/* @kernel ")
    sections: dict[str, str] = {}
    for chunk in ("/* @kernel " + rest).split("/* @kernel ")[1:]:
        name, _, body = chunk.partition(" */\n")
        sections[name.strip()] = body.split("/* @end */")[0].rstrip() + "\n"
    return prelude, sections


def _kernels(name: str, kinds: Iterable[str]) -> str:
    prelude, sections = _template_sections()
    needed = {"requant"}.union(*(_KERNELS_FOR_OP[k] for k in kinds))
    wanted = [k for k in _SECTION_ORDER if k in needed]
    code = prelude.split("*/", 1)[1].lstrip() + "\n" + "\n".join(sections[k] for k in wanted)
    return code.replace("nnk_", f"{name}_").replace("NNK_", f"{name.upper()}_")


# ---- arrays -----------------------------------------------------------------------------


def _c_array(ctype: str, symbol: str, values: npt.NDArray[np.integer], attr: str) -> str:
    flat = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(flat[i : i + VALUES_PER_LINE]) for i in range(0, len(flat), VALUES_PER_LINE)]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {symbol}[{len(flat)}] {attr} = {{\n    {body}\n}};\n"


def _c_int(v: int) -> str:
    # INT32_MIN cannot be written as a literal; none of our constants reach it.
    return str(int(v))


def _c_float(v: float) -> str:
    text = f"{v:.9g}"
    if "e" not in text and "." not in text:
        text += ".0"
    return f"{text}f"


# ---- code -------------------------------------------------------------------------------


class _Writer:
    def __init__(self, qm: QuantModel, name: str, report: ResourceReport) -> None:
        self.qm = qm
        self.name = name
        self.upper = name.upper()
        self.report = report
        self.shapes = {t.id: t.shape for t in report.graph.tensors}
        self.ops = {op.id: op for op in report.graph.ops}
        self.offsets = report.arena.offsets

    def ptr(self, tensor: str) -> str:
        return f"{self.name}_arena + {self.offsets[tensor]}"

    def arrays(self) -> tuple[str, int]:
        parts, total = [], 0
        attr = f"{self.upper}_CONST_ATTR"
        for op in self.report.graph.ops:
            if op.id not in self.qm.weighted:
                continue
            p = self.qm.weighted[op.id]
            base = f"{self.name}_param_{op.id}"
            parts.append(f"/* {op.id}: {op.kind}, weights {'x'.join(map(str, p.weights.shape))} */\n")
            parts.append(_c_array("int8_t", f"{base}_weights", p.weights, attr))
            parts.append(_c_array("int32_t", f"{base}_bias", p.bias, attr))
            parts.append(_c_array("int32_t", f"{base}_mult", p.multiplier, attr))
            parts.append(_c_array("int8_t", f"{base}_shift", p.shift, attr))
            total += p.weights.size + 4 * p.bias.size + 4 * p.multiplier.size + p.shift.size
        return "".join(parts), total

    def call(self, op: Op) -> str:
        src, dst = op.inputs[0], op.outputs[0]
        ih, iw, ic = self.shapes[src]
        oh, ow, oc = self.shapes[dst]
        zp = {t: q.zero_point for t, q in self.qm.qparams.items()}
        if op.kind in ("conv2d", "conv1x1", "dwconv2d", "dense"):
            p = self.qm.weighted[op.id]
            base = f"{self.name}_param_{op.id}"
            consts = f"{base}_weights, {base}_bias, {base}_mult, {base}_shift"
            act = f"{zp[dst]}, {p.act_min}, {p.act_max}"
            if op.kind == "dense":
                args = f"{self.ptr(src)}, {ih * iw * ic}, {consts}, {self.ptr(dst)}, {oc}, {act}"
            elif op.kind == "conv1x1":
                args = f"{self.ptr(src)}, {ih * iw}, {ic}, {consts}, {self.ptr(dst)}, {oc}, {act}"
            else:
                k, stride = int(op.attrs["kernel"]), int(op.attrs["stride"])  # type: ignore[call-overload]
                top = same_padding(ih, k, stride)[0] if op.attrs["padding"] == "same" else 0
                left = same_padding(iw, k, stride)[0] if op.attrs["padding"] == "same" else 0
                out_dims = f"{oh}, {ow}, {oc}" if op.kind == "conv2d" else f"{oh}, {ow}"
                args = (
                    f"{self.ptr(src)}, {ih}, {iw}, {ic}, {consts}, {self.ptr(dst)}, {out_dims}, "
                    f"{k}, {stride}, {top}, {left}, {zp[src]}, {act}"
                )
            return f"    {self.name}_{op.kind}({args});\n"
        if op.kind in ("maxpool", "avgpool"):
            kh, kw = (ih, iw) if op.attrs["size"] == "global" else (int(op.attrs["size"]),) * 2  # type: ignore[call-overload]
            args = f"{self.ptr(src)}, {iw}, {ic}, {self.ptr(dst)}, {oh}, {ow}, {kh}, {kw}"
            return f"    {self.name}_{op.kind}({args});\n"
        if op.kind == "add":
            # The chain of binary Adds (int8_scheme.add_chain), each partial sum written in
            # place in the output buffer: element i of a link reads element i of the partial
            # sum before writing it, and the output never shares bytes with an input (arena.py).
            size = oh * ow * oc
            for t in op.inputs:
                if abs(self.offsets[t] - self.offsets[dst]) < size:
                    raise ExportError(f"{op.id}: its output shares arena bytes with its input {t}")
            lines = []
            for (a, b, link_out), params in zip(add_chain(op), self.qm.adds[op.id], strict=True):
                a_ptr = self.ptr(a) if a in self.offsets else self.ptr(dst)  # a partial sum
                ins = f"{a_ptr}, {self.ptr(b)}"
                lines += [
                    "    {\n",
                    f"        const int8_t *const ins[2] = {{{ins}}};\n",
                    f"        const int32_t zps[2] = {{{zp[a]}, {zp[b]}}};\n",
                    f"        const int32_t mults[2] = {{{', '.join(map(_c_int, params.multipliers))}}};\n",
                    f"        const int32_t shifts[2] = {{{', '.join(map(_c_int, params.shifts))}}};\n",
                    f"        {self.name}_add(ins, zps, mults, shifts, 2, {self.ptr(dst)}, {size}, "
                    f"{zp[link_out]}, {params.out_multiplier}, {params.out_shift});\n",
                    "    }\n",
                ]
            return "".join(lines)
        raise ExportError(f"{op.id}: no kernel for op kind {op.kind!r}")  # pragma: no cover

    def describe(self, op: Op) -> str:
        (ih, iw, ic), (oh, ow, oc) = self.shapes[op.inputs[0]], self.shapes[op.outputs[0]]
        return f"{op.kind} {ih}x{iw}x{ic} -> {oh}x{ow}x{oc}"

    def layer_functions(self) -> str:
        """One never-inlined function per layer (see NNK_LAYER in kernels.h), in run order."""
        n, u = self.name, self.upper
        return "".join(
            f"/* {op_id}: {self.describe(self.ops[op_id])} */\n"
            f"{u}_LAYER void {n}_layer_{op_id}(void)\n{{\n{self.call(self.ops[op_id])}}}\n\n"
            for op_id in self.report.memory.order
        )

    def run_function(self) -> str:
        n, u = self.name, self.upper
        body = [
            f"int {n}_run(const int8_t *input, int8_t *output)\n{{\n",
            "    int32_t i;\n",
            f"    for (i = 0; i < {u}_INPUT_SIZE; ++i) {n}_arena[{self.offsets['input']} + i] = input[i];\n",
        ]
        body += [
            f"    {n}_layer_{op_id}(); /* {self.describe(self.ops[op_id])} */\n"
            for op_id in self.report.memory.order
        ]
        out = self.offsets["logits"]
        body.append(f"    for (i = 0; i < {u}_OUTPUT_SIZE; ++i) output[i] = {n}_arena[{out} + i];\n")
        body.append("    return 0;\n}\n")
        return "".join(body)


def _quantize_function(name: str) -> str:
    u = name.upper()
    return f"""void {name}_quantize_input(const float *x, int8_t *q)
{{
    int32_t i, v;
    for (i = 0; i < {u}_INPUT_SIZE; ++i) {{
        float r = x[i] / {u}_INPUT_SCALE; /* float32 division, as TFLite's QUANTIZE */
        if (!(r > -512.0f)) r = -512.0f;  /* beyond +-512 the result saturates anyway */
        if (r > 512.0f) r = 512.0f;
        v = (int32_t)r;                   /* truncates toward zero; r - v is exact */
        r -= (float)v;
        if (r >= 0.5f) {{
            v += 1;
        }} else if (r <= -0.5f) {{
            v -= 1;
        }}
        v += {u}_INPUT_ZERO_POINT;
        q[i] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
    }}
}}
"""


def _summary(qm: QuantModel, report: ResourceReport) -> str:
    rows = []
    for layer in report.layers:
        shape = "x".join(map(str, layer.output_shape))
        name, kind, flash, macs = layer.name, layer.kind, layer.flash_bytes, layer.macs
        rows.append(f" *   {name:<18} {kind:<9} -> {shape:<12} {flash:>8} B flash {macs:>10} MACs")
    return "\n".join(rows)


def _input_line(note: str) -> str:
    return f" *         x is {note}.\n" if note else ""


def generate_header(qm: QuantModel, name: str, input_note: str = "") -> CHeader:
    """The C header of ``qm`` with every identifier prefixed by ``name`` (a C identifier).

    ``input_note`` says what the real input x is (the dataset's scaling), on its own line.
    """
    if c_identifier(name) != name:
        raise ValueError(f"{name!r} is not a lowercase C identifier (try {c_identifier(name)!r})")
    report = analyze(qm.arch)
    w = _Writer(qm, name, report)
    arrays, flash = w.arrays()
    if flash != report.flash_bytes:
        predicted = report.flash_bytes
        raise ExportError(f"constant arrays hold {flash} B but the resource model predicts {predicted} B")
    arena = report.peak_sram_bytes
    u = name.upper()
    h, wd, c = qm.input_shape
    kinds = {op.kind for op in report.graph.ops}
    input_line = _input_line(input_note)
    text = f"""/* {name}.h: int8 neural network generated by nasweb.
 *
 * Usage: include this header anywhere; in exactly one C file write
 *     #define {u}_IMPLEMENTATION
 *     #include "{name}.h"
 *
 * Input : {h}x{wd}x{c} int8, HWC order.  {name}_quantize_input() quantises real values x as
 *         q = clamp(round(x / {u}_INPUT_SCALE) + {u}_INPUT_ZERO_POINT, -128, 127)
 *         with a float32 division and rounding half away from zero (TFLite's QUANTIZE op).
{input_line} * Output: {qm.classes} int8 logits; real = {u}_OUTPUT_SCALE * (q - {u}_OUTPUT_ZERO_POINT).
 *         The predicted class is the index of the largest logit.
 * Memory: one static arena of {arena} bytes (RAM); {flash} bytes of constant arrays (flash).
 * Compute: {report.macs} multiply-accumulates per inference.
 *
 * Layers (in graph order):
{_summary(qm, report)}
 */
#ifndef {u}_H_INCLUDED
#define {u}_H_INCLUDED

#include <stdint.h>

#define {u}_INPUT_H {h}
#define {u}_INPUT_W {wd}
#define {u}_INPUT_C {c}
#define {u}_INPUT_SIZE {h * wd * c}
#define {u}_OUTPUT_SIZE {qm.classes}
#define {u}_ARENA_SIZE {arena}
#define {u}_FLASH_BYTES {flash}
#define {u}_MACS {report.macs}
#define {u}_INPUT_SCALE {_c_float(qm.input_scale)}
#define {u}_INPUT_ZERO_POINT ({qm.input_zero_point})
#define {u}_OUTPUT_SCALE {_c_float(qm.output_scale)}
#define {u}_OUTPUT_ZERO_POINT ({qm.output_zero_point})

#ifdef __cplusplus
extern "C" {{
#endif

/* Run one inference: input holds {u}_INPUT_SIZE int8 values, output receives
 * {u}_OUTPUT_SIZE int8 logits.  Not re-entrant (one static arena).  Returns 0. */
int {name}_run(const int8_t *input, int8_t *output);

/* Quantise {u}_INPUT_SIZE real values (the training data's units) into the int8 input,
 * byte for byte as nasweb's Python reference and TFLite's QUANTIZE do.  Needs IEEE float32
 * arithmetic (no -ffast-math). */
void {name}_quantize_input(const float *x, int8_t *q);

#ifdef __cplusplus
}}
#endif

#endif /* {u}_H_INCLUDED */

#if defined({u}_IMPLEMENTATION) && !defined({u}_IMPLEMENTATION_DONE)
#define {u}_IMPLEMENTATION_DONE

/* Constant arrays go to flash (.rodata); 'used' keeps even one-element arrays as arrays, so
 * their bytes are the reported flash.  Define {u}_CONST_ATTR to place them elsewhere. */
#ifndef {u}_CONST_ATTR
#if defined(__GNUC__)
#define {u}_CONST_ATTR __attribute__((aligned(4), used))
#else
#define {u}_CONST_ATTR
#endif
#endif

{_kernels(name, kinds)}
{arrays}
#if defined(__GNUC__)
static int8_t {name}_arena[{u}_ARENA_SIZE] __attribute__((aligned(4)));
#else
static int8_t {name}_arena[{u}_ARENA_SIZE];
#endif

{w.layer_functions()}{w.run_function()}
{_quantize_function(name)}
#endif /* {u}_IMPLEMENTATION */
"""
    return CHeader(text=text, name=name, arena_bytes=arena, flash_bytes=flash, macs=report.macs)
