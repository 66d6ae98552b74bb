"""The downloadable bundle of a candidate: its C header plus a buildable, runnable example.

:func:`bundle_zip` returns a zip holding, under one ``<name>/`` folder:

* ``<name>.h`` — the generated header (:func:`searches.engine.deploy.header.generate_header`);
* ``main.c`` — an example that quantises a float input with the header's scale and zero point,
  runs the model, takes the arg-max and prints the logits and the class (stdout on the host,
  semihosting on the Cortex-M build);
* ``startup.S``, ``cortex_m.ld``, ``semihost.h`` — the bare-metal startup, the linker script and
  the semihosting printer the export verification uses;
* ``Makefile`` — ``make host``, ``make arm`` (flags for the profile's core, FLASH/RAM regions set
  to the profile's budget) and ``make run-qemu``;
* ``README.md`` — feeding sensor data, the input layout, reading the output, memory numbers.

The zip is deterministic: the same model and profile give the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from string import Template

from searches.engine.deploy.header import CHeader, generate_header
from searches.engine.deploy.int8 import QuantModel
from searches.engine.deploy.toolchain import (
    APT_COMMAND,
    DEFAULT_STACK_BYTES,
    LINKER_SCRIPT,
    SEMIHOST_HEADER,
    STARTUP,
    Target,
    UnsupportedCore,
    target_for,
)
from searches.engine.resources.latency import CORES

_ZIP_DATE = (2024, 1, 1, 0, 0, 0)

MAIN_C = Template(
    r"""/*
 * Example: run the $name model on one input and print the result.
 *
 *   make host && ./main_host        (your PC)
 *   make arm && make run-qemu        (the Cortex-M build, under QEMU)
 *
 * On your board, replace read_sensor() with your sensor or camera code and print() with
 * your UART/RTT output.  See README.md.
 */
#include <stdint.h>

#define ${NAME}_IMPLEMENTATION
#include "$name.h"

#if defined(__arm__) && !defined(__linux__)
#include "semihost.h" /* bare metal: text goes to the debugger/QEMU through semihosting */
static void print(const char *text) { sh_puts(text); }
#else
#include <stdio.h>
static void print(const char *text) { fputs(text, stdout); }
#endif

/* Fills x with one input in the training data's units (nasweb datasets: pixels in [0, 1]),
 * in HWC order: x[(y * W + x) * C + c].  This stand-in draws a fixed pattern. */
static void read_sensor(float *x)
{
    int32_t i;
    for (i = 0; i < ${NAME}_INPUT_SIZE; ++i) {
        x[i] = (float)(i % 11) / 10.0f;
    }
}

/* Appends the decimal form of v to text at *pos (no printf needed on the board). */
static void append_int(char *text, int32_t *pos, int32_t v)
{
    char digits[12];
    int32_t n = 0;
    uint32_t u = v < 0 ? (uint32_t)0 - (uint32_t)v : (uint32_t)v;
    if (v < 0) text[(*pos)++] = '-';
    do {
        digits[n++] = (char)('0' + u % 10u);
        u /= 10u;
    } while (u != 0u);
    while (n > 0) text[(*pos)++] = digits[--n];
}

static float sensor[${NAME}_INPUT_SIZE];
static int8_t input[${NAME}_INPUT_SIZE];
static int8_t logits[${NAME}_OUTPUT_SIZE];
static char line[16 + 5 * ${NAME}_OUTPUT_SIZE];

int main(void)
{
    int32_t i, best = 0, pos = 0;

    read_sensor(sensor);
    ${name}_quantize_input(sensor, input); /* exactly as nasweb's Python and TFLite quantise */
    if (${name}_run(input, logits) != 0) {
        print("inference failed\n");
        return 1;
    }
    /* The class is the largest logit (the first one on ties).  A logit's real value is
     * ${NAME}_OUTPUT_SCALE * (q - ${NAME}_OUTPUT_ZERO_POINT), if you need scores. */
    for (i = 1; i < ${NAME}_OUTPUT_SIZE; ++i) {
        if (logits[i] > logits[best]) best = i;
    }
    for (i = 0; i < 8; ++i) line[pos++] = "logits: "[i];
    for (i = 0; i < ${NAME}_OUTPUT_SIZE; ++i) {
        append_int(line, &pos, logits[i]);
        line[pos++] = i + 1 < ${NAME}_OUTPUT_SIZE ? ' ' : '\n';
    }
    line[pos] = '\0';
    print(line);
    pos = 0;
    for (i = 0; i < 7; ++i) line[pos++] = "class: "[i];
    append_int(line, &pos, best);
    line[pos++] = '\n';
    line[pos] = '\0';
    print(line);
    return 0;
}
"""
)

MAKEFILE = Template(
    """# Build the $name example for the host or for the profile's $label.
#   make host       ./main_host on this machine (gcc)
$arm_help
# Tools (Debian): sudo $apt

NAME        = $name
CC          = gcc
ARM_CC      = arm-none-eabi-gcc
ARM_SIZE    = arm-none-eabi-size
QEMU        = qemu-system-arm
CFLAGS      = -std=c99 -Wall -Wextra -pedantic -O2

# $label
CORE_FLAGS  = $core_flags
# Memory regions.  The lengths are the profile's budget for the model's application: an image
# that does not fit fails to link ("region FLASH overflowed by N bytes").  The origins are the
# QEMU board's; on your chip use its addresses (e.g. flash at 0x08000000 on an STM32).
FLASH_ORIGIN = $flash_origin
FLASH_SIZE   = $flash_size
RAM_ORIGIN   = $ram_origin
RAM_SIZE     = $ram_size
# Reserved for the call stack, inside RAM_SIZE.
STACK_SIZE   = $stack_size

QEMU_MACHINE = $machine
QEMU_CPU     = $cpu
QEMU_EXTRA   = $qemu_extra

LDFLAGS_ARM = -ffreestanding -nostdlib -Wl,-z,noexecstack -T cortex_m.ld \\
	-Wl,--defsym=__flash_origin=$$(FLASH_ORIGIN) -Wl,--defsym=__flash_length=$$(FLASH_SIZE) \\
	-Wl,--defsym=__ram_origin=$$(RAM_ORIGIN) -Wl,--defsym=__ram_length=$$(RAM_SIZE) \\
	-Wl,--defsym=__stack_size=$$(STACK_SIZE)

.PHONY: host arm run-host run-qemu clean

host: main_host

main_host: main.c $$(NAME).h
	$$(CC) $$(CFLAGS) -o $$@ main.c

run-host: main_host
	./main_host

arm: main.elf
$arm_rules
clean:
	rm -f main_host main.elf
"""
)

ARM_RULES = Template(
    """
main.elf: main.c $$(NAME).h startup.S cortex_m.ld semihost.h
	$$(ARM_CC) $$(CFLAGS) $$(CORE_FLAGS) $$(LDFLAGS_ARM) -o $$@ startup.S main.c -lgcc
	$$(ARM_SIZE) $$@

run-qemu: main.elf
	timeout 60 $$(QEMU) -M $$(QEMU_MACHINE) -cpu $$(QEMU_CPU) $$(QEMU_EXTRA) -display none -monitor none \\
		-serial none -chardev stdio,id=sh0 -semihosting-config enable=on,target=native,chardev=sh0 \\
		-kernel main.elf < /dev/null
"""
)

NO_ARM_RULES = Template(
    """
main.elf run-qemu:
	@echo "$reason" >&2; exit 1
"""
)

README = Template(
    """# $name — int8 model for $label

Generated by nasweb.  `$name.h` is a self-contained C99 header: the int8 weights, the
kernels and `${name}_run()`; it needs only `<stdint.h>` (plus `<arm_acle.h>` on cores with the
DSP extension) and calls no library function.

## Build

$build
In your own project, include the header wherever you call it and, in exactly one C file,
define the implementation first:

```c
#define ${NAME}_IMPLEMENTATION
#include "$name.h"
```

## Memory

| | bytes |
|---|---|
| constant arrays (flash) | $flash_bytes |
| arena (SRAM, one static buffer) | $arena_bytes |
| input / output buffers you provide | $input_size / $output_size |
$stack_row| profile budget: flash / SRAM | $flash_limit / $sram_limit |

Compute: $macs multiply-accumulates per inference.  `make arm` prints the image's
`text`/`data`/`bss` (flash = text + data, RAM = data + bss, which includes the stack).  The
arena is static: `${name}_run()` is not re-entrant.

## Feeding sensor data

The model takes `${NAME}_INPUT_SIZE` = $input_size int8 values: an image of
`${NAME}_INPUT_H` x `${NAME}_INPUT_W` x `${NAME}_INPUT_C` = $h x $w x $c in **HWC** order, so
the value of row `y`, column `x`, channel `c` is at index `(y * $w + x) * $c + c`.

Bring each value into the units the model was trained on (nasweb scales pixels to [0, 1]),
then quantise it:

```
q = clamp(round(x / ${NAME}_INPUT_SCALE) + ${NAME}_INPUT_ZERO_POINT, -128, 127)
```

with `${NAME}_INPUT_SCALE` = $input_scale and `${NAME}_INPUT_ZERO_POINT` = $input_zero_point.
`${name}_quantize_input(x, q)` in the header does exactly this, as nasweb's Python reference and
TFLite's QUANTIZE op do: a float32 division, rounding half away from zero (so the bytes match the
reference on every input; `main.c` calls it).

## Reading the output

`${name}_run(input, output)` writes `${NAME}_OUTPUT_SIZE` = $output_size int8 logits and
returns 0.  The predicted class is the index of the largest logit (`main.c` takes the first
on ties).  A logit's real value is
`${NAME}_OUTPUT_SCALE * (q - ${NAME}_OUTPUT_ZERO_POINT)` (scale $output_scale, zero point
$output_zero_point); apply a softmax to those if you need probabilities.

## Porting to your board

$porting
"""
)

BUILD_CORTEX_M = Template(
    """```sh
make host        # ./main_host on your PC
make arm         # main.elf for the $label
make run-qemu    # runs main.elf under qemu-system-arm ($machine)
```

Tools on Debian: `sudo $apt`.
"""
)

BUILD_OTHER = Template(
    """```sh
make host        # ./main_host on your PC
```

The header is portable C99: build it for the $label with that core's own toolchain.  This
bundle's `make arm` and `make run-qemu` cover Cortex-M cores only.
"""
)

PORTING_CORTEX_M = Template(
    """* `startup.S` and `cortex_m.ld` are a minimal bare-metal startup (vector table, `.data` copy,
  `.bss` zeroing, FPU enable) for QEMU's $machine.  On a real chip use your vendor's startup
  and linker script, or set `FLASH_ORIGIN`/`RAM_ORIGIN` in the Makefile to your chip's map.
* `semihost.h` prints through the debugger (semihosting); replace `print()` in `main.c` with
  your UART or RTT output on hardware without a debugger attached.
* Core flags: `$core_flags`.
"""
)

PORTING_OTHER = Template(
    """* Compile `$name.h` and `main.c` with your board's toolchain and replace `print()` in
  `main.c` with your serial output.  (`startup.S`, `cortex_m.ld` and `semihost.h` are for
  Cortex-M cores and can be ignored.)
"""
)


def _files(
    qm: QuantModel, header: CHeader, core: str, flash_limit_bytes: int, sram_limit_bytes: int
) -> dict[str, str]:
    name, upper = header.name, header.name.upper()
    h, w, c = qm.input_shape
    try:
        target: Target | None = target_for(core)
        reason = ""
    except UnsupportedCore:
        target = None
        reason = f"this bundle builds only for Cortex-M cores, not for {core}: use that core's own toolchain"
    common = {
        "name": name,
        "NAME": upper,
        "apt": APT_COMMAND,
        "stack_size": DEFAULT_STACK_BYTES,
        "label": target.label if target else (CORES[core].label if core in CORES else core),
        "machine": target.machine if target else "no QEMU board",
        "core_flags": " ".join(target.cflags) if target else "(none: not a Cortex-M core)",
    }
    arm_rules = ARM_RULES.substitute() if target else NO_ARM_RULES.substitute(reason=reason.replace('"', "'"))
    makefile = MAKEFILE.substitute(
        common,
        cpu=target.cpu if target else "",
        flash_origin=f"{target.flash_origin:#010x}" if target else "0",
        ram_origin=f"{target.ram_origin:#010x}" if target else "0",
        flash_size=flash_limit_bytes,
        ram_size=sram_limit_bytes,
        qemu_extra=" ".join(target.qemu_memory_args(flash_limit_bytes, sram_limit_bytes)) if target else "",
        arm_rules=arm_rules,
        arm_help=(
            f"#   make arm        main.elf for the {target.label}, within the profile's flash and SRAM\n"
            f"#   make run-qemu   run main.elf under qemu-system-arm ({target.machine})"
            if target
            else f"#   (make arm and make run-qemu build for Cortex-M cores only, not for {common['label']})"
        ),
    )
    readme = README.substitute(
        common,
        stack_row=f"| stack reserved by the Cortex-M example | {DEFAULT_STACK_BYTES} |\n" if target else "",
        build=(BUILD_CORTEX_M if target else BUILD_OTHER).substitute(common),
        porting=(PORTING_CORTEX_M if target else PORTING_OTHER).substitute(common),
        flash_bytes=header.flash_bytes,
        arena_bytes=header.arena_bytes,
        macs=header.macs,
        flash_limit=flash_limit_bytes,
        sram_limit=sram_limit_bytes,
        input_size=h * w * c,
        output_size=qm.classes,
        h=h,
        w=w,
        c=c,
        input_scale=f"{qm.input_scale:.9g}",
        input_zero_point=qm.input_zero_point,
        output_scale=f"{qm.output_scale:.9g}",
        output_zero_point=qm.output_zero_point,
    )
    return {
        f"{name}.h": header.text,
        "main.c": MAIN_C.substitute(common),
        "startup.S": STARTUP.read_text(),
        "cortex_m.ld": LINKER_SCRIPT.read_text(),
        "semihost.h": SEMIHOST_HEADER.read_text(),
        "Makefile": makefile,
        "README.md": readme,
    }


def bundle_zip(
    qm: QuantModel,
    name: str,
    *,
    core: str,
    flash_limit_bytes: int,
    sram_limit_bytes: int,
    input_note: str = "",
) -> bytes:
    """The zip bundle (header, example, startup, linker script, Makefile, README) as bytes."""
    header = generate_header(qm, name, input_note)
    files = _files(qm, header, core, flash_limit_bytes, sram_limit_bytes)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for filename in sorted(files):
            info = zipfile.ZipInfo(f"{header.name}/{filename}", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[filename])
    return buffer.getvalue()
