/*
 * nasweb's instruction-counting TCG plugin for qemu-system-arm (plugin API v1).
 *
 * Every guest instruction gets an inline "add 1" when its translation block is translated,
 * so the count is exact even when a block is left early (an exception, a semihosting call):
 * the counter is bumped just before each instruction's own code runs.  The guests nasweb
 * runs have one vCPU, so one plain counter suffices.  At exit the total is printed as
 * "insns: N" through qemu_plugin_outs (read it with `-d plugin -D FILE`).
 *
 * Build: gcc -shared -fPIC -O2 -o insn_count.so insn_count.c
 */
#include <inttypes.h>
#include <stdio.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t insn_total;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i;
    (void)id;
    for (i = 0; i < n; i++) {
        qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_tb_get_insn(tb, i), QEMU_PLUGIN_INLINE_ADD_U64,
                                                   &insn_total, 1);
    }
}

static void on_exit(qemu_plugin_id_t id, void *userdata)
{
    char line[64];
    (void)id;
    (void)userdata;
    snprintf(line, sizeof line, "insns: %" PRIu64 "\n", insn_total);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    (void)argc;
    (void)argv;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, on_exit, NULL);
    return 0;
}
