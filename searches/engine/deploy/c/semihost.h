/*
 * Semihosting output for nasweb's bare-metal test programs (with startup.S and cortex_m.ld).
 * Text goes to the host through SYS_WRITE0; under QEMU it lands in the semihosting chardev.
 * On real hardware replace sh_puts() with your UART or RTT output.
 */
#ifndef NASWEB_SEMIHOST_H
#define NASWEB_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/* Defined in startup.S: ends the run with this exit status (SYS_EXIT_EXTENDED). */
void nasweb_exit(int status) __attribute__((noreturn));

static inline void sh_puts(const char *text)
{
    register uint32_t r0 __asm__("r0") = 0x04; /* SYS_WRITE0 */
    register const char *r1 __asm__("r1") = text;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}

/* Writes "<prefix><hex of up to 256 bytes>\n" in one semihosting call.  The line buffer is
 * static, not on the stack, so that printing does not inflate the measured stack use. */
static inline void sh_put_hex_line(const char *prefix, const int8_t *bytes, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    static char line[2 * 256 + 32];
    size_t pos = 0, i;
    while (*prefix != '\0' && pos < 16) {
        line[pos++] = *prefix++;
    }
    for (i = 0; i < n && i < 256; i++) {
        uint8_t b = (uint8_t)bytes[i];
        line[pos++] = digits[b >> 4];
        line[pos++] = digits[b & 0xF];
    }
    line[pos++] = '\n';
    line[pos] = '\0';
    sh_puts(line);
}

/* Writes "<prefix><value in decimal>\n". */
static inline void sh_put_uint_line(const char *prefix, uint32_t value)
{
    char line[48];
    char digits[11];
    size_t pos = 0, n = 0;
    while (*prefix != '\0' && pos < 32) {
        line[pos++] = *prefix++;
    }
    do {
        digits[n++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    while (n > 0) {
        line[pos++] = digits[--n];
    }
    line[pos++] = '\n';
    line[pos] = '\0';
    sh_puts(line);
}

/* Bytes of the reserved stack that were ever written (startup.S paints it at reset). */
static inline uint32_t sh_stack_used(void)
{
    extern uint32_t __stack_bottom[];
    extern uint32_t __stack_top[];
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == 0x5AA5C33Cu) {
        p++;
    }
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

#endif
