/* touch: walk a memory region one 4 KiB page at a time, epoch by epoch.
 *
 * Runs at CPL3 with IOPL=3. The host fills the mailbox (r15), the payload
 * runs one pass over its region, records rdtsc before and after, and exits
 * to the host with `out PORT_SYNC`. The host decides what comes next.
 *
 * Which pages a pass touches is a function of the mailbox fields only, so
 * the host computes the exact touched set (kvmctl/guest/patterns.py):
 *   seq      every page 0..pages-1
 *   stride   pages 0, S, 2S, ...
 *   random   draws d = 0..D-1: page = hi32(splitmix64(key + (d+1)*GOLDEN)) * pages >> 32
 *   hotcold  pages 0..H-1 every epoch; pages H..pages-1 when cold_every != 0
 *            and epoch % cold_every == 0
 *   moving   H pages from s = ((epoch / shift_every) % pages) * H % pages,
 *            wrapping past the region's end: the hot window moves on by its
 *            own size every shift_every epochs
 * A write stores epoch+1 in the page's first 8 bytes; a read adds that
 * qword to the checksum.
 */
    .intel_syntax noprefix
    .include "mailbox.inc"
    .include "runtime.inc"

    .section .text
    .globl payload_start
payload_start:
    PAYLOAD_HEADER entry

entry:
    mov r15, rdi                      /* mailbox */
    mov rax, MAILBOX_MAGIC
    cmp [r15 + MB_MAGIC], rax
    jne bad_magic
    mov eax, -1                       /* ready for the first epoch */
sync:
    mov dx, PORT_SYNC
    out dx, eax
    cmp qword ptr [r15 + MB_COMMAND], CMD_EXIT
    je finish

    /* per-epoch constants held in registers */
    mov r8, [r15 + MB_BASE]
    mov r9, [r15 + MB_PAGES]
    mov r10, [r15 + MB_EPOCH]
    lea r11, [r10 + 1]                /* stamp */
    xor r12, r12                      /* touches */
    xor r13, r13                      /* checksum */
    mov r14, [r15 + MB_PROGRESS_EVERY]
    test r14, r14
    jnz 1f
    mov r14, -1                       /* never */
1:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r15 + MB_TSC_START], rax

    mov rax, [r15 + MB_PATTERN]
    cmp rax, PAT_SEQ
    je pat_seq
    cmp rax, PAT_STRIDE
    je pat_stride
    cmp rax, PAT_RANDOM
    je pat_random
    cmp rax, PAT_HOTCOLD
    je pat_hotcold
    cmp rax, PAT_MOVING
    je pat_moving
    mov eax, ERR_BAD_PATTERN
    jmp error

/* touch_page: rcx = page index. Clobbers rax, rdx, rdi. */
touch_page:
    mov rdi, rcx
    shl rdi, 12
    add rdi, r8
    cmp qword ptr [r15 + MB_WRITE], 0
    je 2f
    mov [rdi], r11
    jmp 3f
2:  add r13, [rdi]
3:  inc r12
    cmp r12, r14
    jb 4f
    /* progress report: a multiple of progress_every touches */
    xor edx, edx
    mov rax, r12
    div qword ptr [r15 + MB_PROGRESS_EVERY]
    test rdx, rdx
    jnz 4f
    mov rax, r12
    mov dx, PORT_PROGRESS
    out dx, eax
4:  ret

/* touch_range: pages rcx, rcx+rsi, ... below rbx. Without progress reports
 * it is a tight loop (the speed of the payload is the figure users compare
 * with native); with them, one touch_page call per page. Keeps rbx, rsi.
 * Clobbers rax, rdx, rdi and (slow path) rcx. */
touch_range:
    cmp rcx, rbx
    jae 9f
    cmp qword ptr [r15 + MB_PROGRESS_EVERY], 0
    jne 8f
    mov rdi, rcx
    shl rdi, 12
    add rdi, r8                       /* first address */
    mov rdx, rbx
    shl rdx, 12
    add rdx, r8                       /* end address */
    mov rax, rsi
    shl rax, 12                       /* step in bytes */
    cmp qword ptr [r15 + MB_WRITE], 0
    je 2f
1:  mov [rdi], r11
    inc r12
    add rdi, rax
    cmp rdi, rdx
    jb 1b
    ret
2:  add r13, [rdi]
    inc r12
    add rdi, rax
    cmp rdi, rdx
    jb 2b
    ret
8:  call touch_page
    add rcx, rsi
    cmp rcx, rbx
    jb 8b
9:  ret

pat_seq:
    xor ecx, ecx
    mov rbx, r9
    mov esi, 1
    call touch_range
    jmp epoch_done

pat_stride:
    xor ecx, ecx
    mov rbx, r9
    mov rsi, [r15 + MB_STRIDE]
    call touch_range
    jmp epoch_done

pat_random:
    mov rsi, [r15 + MB_KEY]
    mov rbx, [r15 + MB_DRAWS]
    test rbx, rbx
    jz epoch_done
5:  mov rax, 0x9E3779B97F4A7C15       /* splitmix64 */
    add rsi, rax
    mov rax, rsi
    mov rdx, rax
    shr rdx, 30
    xor rax, rdx
    mov rdx, 0xBF58476D1CE4E5B9
    imul rax, rdx
    mov rdx, rax
    shr rdx, 27
    xor rax, rdx
    mov rdx, 0x94D049BB133111EB
    imul rax, rdx
    mov rdx, rax
    shr rdx, 31
    xor rax, rdx
    shr rax, 32                       /* page = hi32 * pages >> 32 */
    mul r9
    shrd rax, rdx, 32
    mov rcx, rax
    call touch_page
    dec rbx
    jnz 5b
    jmp epoch_done

pat_hotcold:
    mov rbx, [r15 + MB_HOT_PAGES]
    cmp rbx, r9
    jbe 1f
    mov rbx, r9
1:  xor ecx, ecx
    mov esi, 1
    call touch_range
    /* cold pages this epoch? */
    mov rsi, [r15 + MB_COLD_EVERY]
    test rsi, rsi
    jz epoch_done
    xor edx, edx
    mov rax, r10
    div rsi
    test rdx, rdx
    jnz epoch_done
    mov rcx, rbx
    mov rbx, r9
    mov esi, 1
    call touch_range
    jmp epoch_done

pat_moving:
    mov rbx, [r15 + MB_HOT_PAGES]
    cmp rbx, r9
    jbe 1f
    mov rbx, r9
1:  test rbx, rbx
    jz epoch_done
    mov rsi, [r15 + MB_SHIFT_EVERY]
    test rsi, rsi
    jz bad_pattern
    mov rax, r10                      /* window = epoch / shift_every */
    xor edx, edx
    div rsi
    xor edx, edx                      /* (window % pages) * H % pages: no product overflows */
    div r9
    mov rax, rdx
    mul rbx
    div r9
    mov rcx, rdx                      /* s */
    lea rax, [rcx + rbx]              /* s + H */
    mov esi, 1
    cmp rax, r9
    jbe 2f
    sub rax, r9                       /* wraps: s..pages-1, then 0..s+H-pages-1 */
    push rax
    mov rbx, r9
    call touch_range
    pop rbx
    xor ecx, ecx
    call touch_range
    jmp epoch_done
2:  mov rbx, rax
    call touch_range

epoch_done:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r15 + MB_TSC_END], rax
    mov [r15 + MB_TOUCHED], r12
    add [r15 + MB_CHECKSUM], r13
    mov rax, r10
    jmp sync

bad_pattern:
    mov eax, ERR_BAD_PATTERN
    jmp error

bad_magic:
    mov eax, ERR_BAD_MAGIC
error:
    mov dx, PORT_ERROR
    out dx, eax
    jmp error

finish:
    mov dx, PORT_EXIT
    xor eax, eax
    out dx, eax
    jmp finish

    EXCEPTION_STUBS
