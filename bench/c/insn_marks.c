/*
 * A variant of nasweb's instruction-counting QEMU plugin for bench/ only: it counts every
 * guest instruction, like insn_count.c, and also records the running count whenever one of
 * the marked addresses executes.  bench/latency_profile.py marks the entry of each layer
 * function and the instruction after its call, so the difference is everything that layer
 * ran: its own code, the out-of-line kernels and the library helpers it called.
 *
 * Arguments: marks=ADDR:ADDR:... (hexadecimal).  At exit it prints "mark ADDR COUNT" for each
 * execution of a marked address, in order, then "insns: N".
 *
 * Build: gcc -shared -fPIC -O2 -I searches/engine/deploy/c -o insn_marks.so insn_marks.c
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* Part of plugin API v1, not in nasweb's minimal header (insn_count.c has no use for them). */
enum mark_cb_flags { MARK_CB_NO_REGS };
typedef void (*mark_cb_t)(unsigned int vcpu_index, void *userdata);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, mark_cb_t cb, enum mark_cb_flags flags,
                                            void *userdata);

#define MAX_MARKS 4096
#define MAX_HITS (1u << 20)

static uint64_t insn_total;
static uint64_t marks[MAX_MARKS];
static size_t n_marks;
static uint64_t hit_pc[MAX_HITS], hit_count[MAX_HITS];
static size_t n_hits;

static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    if (n_hits < MAX_HITS) {
        hit_pc[n_hits] = marks[(size_t)(uintptr_t)userdata];
        hit_count[n_hits] = insn_total;
        n_hits++;
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i, m;
    (void)id;
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        /* the callback is registered first, so it sees the count before this instruction */
        for (m = 0; m < n_marks; m++) {
            if (marks[m] == pc) {
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, MARK_CB_NO_REGS, (void *)(uintptr_t)m);
            }
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &insn_total, 1);
    }
}

static void print_marks(qemu_plugin_id_t id, void *userdata)
{
    char line[96];
    size_t i;
    (void)id;
    (void)userdata;
    for (i = 0; i < n_hits; i++) {
        snprintf(line, sizeof line, "mark %" PRIx64 " %" PRIu64 "\n", hit_pc[i], hit_count[i]);
        qemu_plugin_outs(line);
    }
    snprintf(line, sizeof line, "insns: %" PRIu64 "\n", insn_total);
    qemu_plugin_outs(line);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int a;
    (void)info;
    for (a = 0; a < argc; a++) {
        char *p;
        if (strncmp(argv[a], "marks=", 6) != 0) continue;
        for (p = argv[a] + 6; *p != '\0' && n_marks < MAX_MARKS;) {
            marks[n_marks++] = strtoull(p, &p, 16);
            if (*p == ':') p++;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, print_marks, NULL);
    return 0;
}
