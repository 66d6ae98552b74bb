/*
 * Minimal bare-metal startup for the Cortex-M cores nasweb builds for (ARMv6-M to ARMv8-M):
 * only Thumb-1 instructions, so one file serves the M0+ as well as the M33.
 *
 * Reset: copy .data from flash, zero .bss, paint the reserved stack (so the program can
 * report its high-water mark), enable the FPU on cores built for one, call main(), and
 * hand main's return value to the host with semihosting SYS_EXIT_EXTENDED.  Any fault or
 * unexpected exception prints a line and exits with 128 + the exception number.
 *
 * Symbols from cortex_m.ld: __stack_top, __stack_bottom, __data_load, __data_start,
 * __data_end, __bss_start, __bss_end.
 */
    .syntax unified
    .thumb

    .equ STACK_PAINT, 0x5AA5C33C
    .equ SYS_WRITE0, 0x04
    .equ SYS_EXIT_EXTENDED, 0x20
    .equ ADP_STOPPED_APPLICATION_EXIT, 0x20026

    .section .vectors, "a"
    .align 2
    .globl __vectors
__vectors:
    .word __stack_top
    .word Reset_Handler
    .rept 14                     /* NMI, HardFault, ..., SysTick: all fatal here */
    .word Fault_Handler
    .endr

    .text
    .align 1
    .thumb_func
    .globl Reset_Handler
    .type Reset_Handler, %function
Reset_Handler:
    ldr r0, =__data_load
    ldr r1, =__data_start
    ldr r2, =__data_end
1:  cmp r1, r2
    bhs 2f
    ldr r3, [r0]
    str r3, [r1]
    adds r0, #4
    adds r1, #4
    b 1b
2:  ldr r1, =__bss_start
    ldr r2, =__bss_end
    movs r3, #0
3:  cmp r1, r2
    bhs 4f
    str r3, [r1]
    adds r1, #4
    b 3b
4:  ldr r1, =__stack_bottom
    mov r2, sp
    ldr r3, =STACK_PAINT
5:  cmp r1, r2
    bhs 6f
    str r3, [r1]
    adds r1, #4
    b 5b
6:
#if defined(__ARM_FP)
    ldr r0, =0xE000ED88          /* CPACR: full access to CP10 and CP11 */
    ldr r1, [r0]
    ldr r2, =(0xF << 20)
    orrs r1, r2
    str r1, [r0]
    dsb
    isb
#endif
    bl main
    bl nasweb_exit
    .size Reset_Handler, . - Reset_Handler

/* void nasweb_exit(int status): end the QEMU run with this exit status. */
    .align 1
    .thumb_func
    .globl nasweb_exit
    .type nasweb_exit, %function
nasweb_exit:
    sub sp, #8
    ldr r1, =ADP_STOPPED_APPLICATION_EXIT
    str r1, [sp]
    str r0, [sp, #4]
    mov r1, sp
    movs r0, #SYS_EXIT_EXTENDED
    bkpt 0xab
7:  b 7b
    .size nasweb_exit, . - nasweb_exit

    .align 1
    .thumb_func
    .type Fault_Handler, %function
Fault_Handler:
    ldr r1, =fault_message
    movs r0, #SYS_WRITE0
    bkpt 0xab
    mrs r0, ipsr
    adds r0, #128
    bl nasweb_exit
    .size Fault_Handler, . - Fault_Handler

    .pool

    .section .rodata
fault_message:
    .asciz "nasweb: fault or unexpected exception (exit status = 128 + exception number)\n"

/* Marks the stack as non-executable for the linker. */
    .section .note.GNU-stack, "", %progbits
