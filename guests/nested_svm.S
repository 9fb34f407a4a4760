/* nested_svm: run the touch loop in a nested guest (L2) under AMD SVM with
 * nested paging, so that the host's KVM must build shadow (rmap) roots for
 * the L2 address space. On a TDP host this is what makes the VM's aging fall
 * back from the TDP MMU walk to the rmap walk (kvm_memslots_have_rmaps()).
 *
 * Runs at CPL0 (MachineSpec(cpl=0)); the VM's CPUID must offer SVM + NPT,
 * which KVM does for kvm_amd with nested=1. Intel VMX is not covered: the
 * lab emulates an AMD CPU, and a VMX payload could not be tested here.
 *
 * Layout: the last NSVM_RESERVED pages (2 MiB) of this vCPU's region hold
 *   +0      VMCB of the L2 guest
 *   +4K     host save area (MSR VM_HSAVE_PA)
 *   +8K     nested page table root (PML4, nCR3)
 *   +12K    PDPT
 *   +16K..  one page directory per GiB, 2 MiB leaves
 * The nested page tables map L2-physical == L1-physical for every GiB up to
 * the region's end, so L2 reuses L1's own page tables (CR3), code, GDT and
 * IDT unchanged. L2 touches pages 0 .. pages-NSVM_RESERVED-1 of the region
 * (pattern seq only; read or write as the mailbox says) and leaves with
 * VMMCALL, which L1 intercepts; L1 then reports the epoch like touch.S.
 *
 * GPRs other than RAX/RSP pass through VMRUN and #VMEXIT unchanged, which is
 * how L1 hands L2 its arguments (r8-r11) and gets the counts back (r12, r13).
 * r15 (mailbox) is never written by L2.
 *
 * Errors go out on PORT_ERROR with ERR_NSVM_* (mailbox.inc); for an unexpected #VMEXIT the
 * mailbox holds the exit code (fault_vector), EXITINFO1 (fault_error),
 * EXITINFO2 (fault_cr2) and L2's RIP (fault_rip).
 */
    .intel_syntax noprefix
    .include "mailbox.inc"
    .include "runtime.inc"

.equ NSVM_RESERVED,       512           /* pages at the region's end: 2 MiB */

.equ MSR_EFER,            0xc0000080
.equ MSR_VM_HSAVE_PA,     0xc0010117
.equ EFER_SVME,           0x1000

/* VMCB control area */
.equ VMCB_INTERCEPT_EXC,  0x008
.equ VMCB_INTERCEPT1,     0x00c
.equ VMCB_INTERCEPT2,     0x010
.equ VMCB_ASID,           0x058
.equ VMCB_EXIT_CODE,      0x070
.equ VMCB_EXIT_INFO1,     0x078
.equ VMCB_EXIT_INFO2,     0x080
.equ VMCB_NESTED_CTL,     0x090
.equ VMCB_NCR3,           0x0b0
.equ VMCB_CLEAN,          0x0c0
/* VMCB state save area: segments are {u16 sel, u16 attrib, u32 limit, u64 base} */
.equ VMCB_ES,             0x400
.equ VMCB_CS,             0x410
.equ VMCB_SS,             0x420
.equ VMCB_DS,             0x430
.equ VMCB_GDTR,           0x460
.equ VMCB_IDTR,           0x480
.equ VMCB_TR,             0x490
.equ VMCB_CPL,            0x4cb
.equ VMCB_EFER,           0x4d0
.equ VMCB_CR4,            0x548
.equ VMCB_CR3,            0x550
.equ VMCB_CR0,            0x558
.equ VMCB_DR7,            0x560
.equ VMCB_DR6,            0x568
.equ VMCB_RFLAGS,         0x570
.equ VMCB_RIP,            0x578
.equ VMCB_RSP,            0x5d8
.equ VMCB_RAX,            0x5f8
.equ VMCB_GPAT,           0x668

.equ INTERCEPT1_HLT,      1 << 24
.equ INTERCEPT1_SHUTDOWN, 1 << 31
.equ INTERCEPT2_VMRUN,    1 << 0        /* architecturally required */
.equ INTERCEPT2_VMMCALL,  1 << 1
.equ NESTED_CTL_NP,       1
.equ VMEXIT_VMMCALL,      0x81

/* segment attributes: descriptor bits 40-47 and 52-55 */
.equ ATTR_CODE64,         0x0a9b        /* P, S, exec/read/accessed, L, G */
.equ ATTR_DATA,           0x0c93        /* P, S, read/write/accessed, D/B, G */
.equ ATTR_TSS64_BUSY,     0x008b
.equ SEL_KCODE,           0x08
.equ SEL_KDATA,           0x10

/* nested page table entries: NPT walks are user accesses, so U/S is required */
.equ NPT_TABLE,           0x27          /* P, RW, US, A */
.equ NPT_LEAF_2M,         0xe7          /* P, RW, US, A, D, PS */

    .section .text
    .globl payload_start
payload_start:
    PAYLOAD_HEADER entry

entry:
    mov r15, rdi                      /* mailbox */
    mov rax, MAILBOX_MAGIC
    cmp [r15 + MB_MAGIC], rax
    jne bad_magic

    /* SVM (CPUID 8000_0001h ECX[2]) and nested paging (8000_000Ah EDX[0]) */
    mov eax, 0x80000001
    cpuid
    bt ecx, 2
    mov eax, ERR_NSVM_NO_SVM
    jnc error
    mov eax, 0x8000000a
    cpuid
    bt edx, 0
    mov eax, ERR_NSVM_NO_NPT
    jnc error

    mov ecx, MSR_EFER
    rdmsr
    or eax, EFER_SVME
    wrmsr

    mov eax, -1                       /* ready for the first epoch */
sync:
    mov dx, PORT_SYNC
    out dx, eax
    cmp qword ptr [r15 + MB_COMMAND], CMD_EXIT
    je finish
    cmp qword ptr [r15 + MB_PATTERN], PAT_SEQ
    mov eax, ERR_BAD_PATTERN
    jne error
    mov rax, [r15 + MB_PAGES]
    cmp rax, NSVM_RESERVED + 1
    mov eax, ERR_NSVM_TOO_SMALL
    jb error

    call setup_vmcb                   /* rbx = VMCB; rebuilt each epoch: cheap, and stateless */

    /* L2's arguments, passed in registers through VMRUN */
    mov r8, [r15 + MB_BASE]
    mov r9, [r15 + MB_PAGES]
    sub r9, NSVM_RESERVED
    mov r10, [r15 + MB_WRITE]
    mov r11, [r15 + MB_EPOCH]
    inc r11                           /* stamp */
    xor r12, r12                      /* touches */
    xor r13, r13                      /* checksum */

    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r15 + MB_TSC_START], rax

    mov rax, rbx
    vmrun                             /* L2 runs l2_entry until VMMCALL */

    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [r15 + MB_TSC_END], rax
    mov [r15 + MB_TOUCHED], r12
    mov [r15 + MB_CHECKSUM], r13

    call vmcb_address                 /* rbx = VMCB (L2 may have clobbered rbx) */
    mov rax, [rbx + VMCB_EXIT_CODE]
    cmp rax, VMEXIT_VMMCALL
    jne bad_vmexit
    mov eax, [r15 + MB_EPOCH]
    jmp sync

bad_vmexit:
    mov [r15 + MB_FAULT_VECTOR], rax
    mov rax, [rbx + VMCB_EXIT_INFO1]
    mov [r15 + MB_FAULT_ERROR], rax
    mov rax, [rbx + VMCB_EXIT_INFO2]
    mov [r15 + MB_FAULT_CR2], rax
    mov rax, [rbx + VMCB_RIP]
    mov [r15 + MB_FAULT_RIP], rax
    mov eax, ERR_NSVM_VMEXIT
    jmp error

bad_magic:
    mov eax, ERR_BAD_MAGIC
error:
    mov dx, PORT_ERROR
    out dx, eax
    hlt
    jmp error
finish:
    mov dx, PORT_EXIT
    out dx, eax
    hlt
    jmp finish

/* vmcb_address: rbx = base + (pages - NSVM_RESERVED) * 4096. Clobbers nothing else. */
vmcb_address:
    mov rbx, [r15 + MB_PAGES]
    sub rbx, NSVM_RESERVED
    shl rbx, 12
    add rbx, [r15 + MB_BASE]
    ret

/* setup_vmcb: zero the 2 MiB SVM area's first pages, build the nested page
 * tables and the VMCB, point VM_HSAVE_PA at the save area. Returns rbx = VMCB.
 * Clobbers rax, rcx, rdx, rdi, rsi, r8, r9. */
setup_vmcb:
    call vmcb_address
    /* PDs needed: GiBs from 0 up to the region's end (which includes this area) */
    mov rsi, [r15 + MB_PAGES]
    shl rsi, 12
    add rsi, [r15 + MB_BASE]
    add rsi, (1 << 30) - 1
    shr rsi, 30                       /* rsi = GiBs to map (<= 508 fit in the area) */

    mov rdi, rbx
    lea rcx, [rsi + 4]                /* VMCB, HSAVE, PML4, PDPT + PDs */
    shl rcx, 9                        /* qwords */
    xor eax, eax
    cld
    rep stosq

    /* PML4[0] -> PDPT */
    lea rax, [rbx + 3 * 4096]
    or rax, NPT_TABLE
    mov [rbx + 2 * 4096], rax
    /* PDPT[g] -> PD_g; PD_g[j] -> 2 MiB leaf at g GiB + j * 2 MiB */
    xor r8, r8                        /* g */
1:  cmp r8, rsi
    jae 3f
    mov rdi, r8
    add rdi, 4
    shl rdi, 12
    add rdi, rbx                      /* PD_g */
    lea rax, [rdi + NPT_TABLE]
    mov [rbx + 3 * 4096 + r8 * 8], rax
    mov rax, r8
    shl rax, 30
    or rax, NPT_LEAF_2M
    xor r9, r9                        /* j */
2:  mov [rdi + r9 * 8], rax
    add rax, 1 << 21
    inc r9
    cmp r9, 512
    jb 2b
    inc r8
    jmp 1b
3:
    lea rax, [rbx + 4096]             /* host save area */
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_VM_HSAVE_PA
    wrmsr

    /* control area */
    mov dword ptr [rbx + VMCB_INTERCEPT_EXC], 0xffffffff
    mov dword ptr [rbx + VMCB_INTERCEPT1], INTERCEPT1_HLT | INTERCEPT1_SHUTDOWN
    mov dword ptr [rbx + VMCB_INTERCEPT2], INTERCEPT2_VMRUN | INTERCEPT2_VMMCALL
    mov dword ptr [rbx + VMCB_ASID], 1
    mov qword ptr [rbx + VMCB_NESTED_CTL], NESTED_CTL_NP
    lea rax, [rbx + 2 * 4096]
    mov [rbx + VMCB_NCR3], rax
    mov dword ptr [rbx + VMCB_CLEAN], 0

    /* state save area: L2 runs in L1's long mode, flat segments, CPL0 */
    mov word ptr [rbx + VMCB_CS], SEL_KCODE
    mov word ptr [rbx + VMCB_CS + 2], ATTR_CODE64
    mov dword ptr [rbx + VMCB_CS + 4], 0xffffffff
    .irp seg, VMCB_ES, VMCB_SS, VMCB_DS
    mov word ptr [rbx + \seg], SEL_KDATA
    mov word ptr [rbx + \seg + 2], ATTR_DATA
    mov dword ptr [rbx + \seg + 4], 0xffffffff
    .endr
    mov word ptr [rbx + VMCB_TR + 2], ATTR_TSS64_BUSY
    mov dword ptr [rbx + VMCB_TR + 4], 0x67
    /* sgdt/sidt store a u16 limit then the u64 base: at +6 the base lands on
     * the VMCB's base (+8); the limit is then moved into the u32 at +4. */
    sgdt [rbx + VMCB_GDTR + 6]
    movzx eax, word ptr [rbx + VMCB_GDTR + 6]
    mov dword ptr [rbx + VMCB_GDTR + 4], eax
    sidt [rbx + VMCB_IDTR + 6]
    movzx eax, word ptr [rbx + VMCB_IDTR + 6]
    mov dword ptr [rbx + VMCB_IDTR + 4], eax
    mov byte ptr [rbx + VMCB_CPL], 0

    mov ecx, MSR_EFER
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [rbx + VMCB_EFER], rax
    mov rax, cr0
    mov [rbx + VMCB_CR0], rax
    mov rax, cr3
    mov [rbx + VMCB_CR3], rax
    mov rax, cr4
    mov [rbx + VMCB_CR4], rax
    mov qword ptr [rbx + VMCB_DR7], 0x400
    mov eax, 0xffff0ff0
    mov [rbx + VMCB_DR6], rax
    mov qword ptr [rbx + VMCB_RFLAGS], 2
    lea rax, [rip + l2_entry]
    mov [rbx + VMCB_RIP], rax
    lea rax, [rsp - 256]              /* L2 uses no stack; keep it off L1's live frames */
    mov [rbx + VMCB_RSP], rax
    mov rax, 0x0007040600070406       /* power-on PAT */
    mov [rbx + VMCB_GPAT], rax
    ret

/* L2: r8 = base, r9 = pages, r10 = write, r11 = stamp; out r12 touches, r13 checksum */
l2_entry:
    xor rcx, rcx
1:  cmp rcx, r9
    jae 3f
    mov rdi, rcx
    shl rdi, 12
    add rdi, r8
    test r10, r10
    jz 2f
    mov [rdi], r11
    inc r12
    inc rcx
    jmp 1b
2:  add r13, [rdi]
    inc r12
    inc rcx
    jmp 1b
3:  vmmcall
    jmp 3b

    EXCEPTION_STUBS
