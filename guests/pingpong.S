/* pingpong: `out PORT_PING` as fast as possible, arg0 times, then exit.
 * Measures the cost of a port I/O exit round trip through the host's
 * exit-handling loop (scripts/bench_core.py). CPL3, IOPL=3. */
    .intel_syntax noprefix
    .include "mailbox.inc"
    .include "runtime.inc"

    .section .text
    .globl payload_start
payload_start:
    PAYLOAD_HEADER entry

entry:
    mov r15, rdi
    mov rcx, [r15 + MB_ARG0]
    mov dx, PORT_PING
1:  test rcx, rcx
    jz 2f
    mov eax, ecx
    out dx, eax
    dec rcx
    jmp 1b
2:  mov dx, PORT_EXIT
    xor eax, eax
    out dx, eax
    jmp 2b

    EXCEPTION_STUBS
