/* faults: misbehave on purpose so the host's error paths are tested.
 * arg0 selects: 0 invalid opcode (ud2), 1 read unmapped guest-physical
 * memory at arg1 (MMIO exit), 2 page fault on a non-present address arg1,
 * 3 spin forever without exiting (watchdog), 4 hlt (privileged at CPL3: #GP,
 * a HLT exit at CPL0). */
    .intel_syntax noprefix
    .include "mailbox.inc"
    .include "runtime.inc"

    .section .text
    .globl payload_start
payload_start:
    PAYLOAD_HEADER entry

entry:
    mov r15, rdi
    mov rax, [r15 + MB_ARG0]
    mov rbx, [r15 + MB_ARG1]
    cmp rax, 0
    je do_ud2
    cmp rax, 1
    je do_load
    cmp rax, 2
    je do_load
    cmp rax, 3
    je do_spin
do_hlt:
    hlt
    jmp do_hlt
do_ud2:
    ud2
do_load:
    mov rax, [rbx]
    jmp do_load
do_spin:
    pause
    jmp do_spin

    EXCEPTION_STUBS
