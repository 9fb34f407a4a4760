"""Building a 64-bit guest directly: page tables, GDT, IDT, TSS, sregs.

The guest is entered in long mode through KVM_SET_SREGS, with no firmware
and no guest kernel. Everything is identity mapped (guest virtual ==
guest physical) with the U/S bit on every level, so payload code runs at
CPL3 (IOPL=3 so that `out` works). On PVM hosts CPL0 guest code is emulated
one instruction at a time; CPL3 runs natively there and on VMX/SVM.

System area layout (one small anonymous memslot at GPA 0)::

    0x00000  GDT   null, kcode64 0x08, kdata 0x10, udata 0x18, ucode64 0x20, TSS_i 0x28+16i
    0x01000  IDT   32 interrupt gates -> the payload's exception stubs (CPL0)
    0x10000  payload code (<= 64 KiB)
    0x20000  mailboxes, one page per vCPU
    ...      TSSs (with an all-ports I/O bitmap), user stacks, kernel stacks,
             page tables (sizes depend on the VM)

IOPL=3 alone lets CPL3 code use `out` on VMX/SVM, but PVM checks the TSS
I/O permission bitmap, so every TSS carries one that allows every port.

Guest A/D bits are preset in every entry so the guest's walks never have
to set them.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

import numpy as np

from kvmctl.kvm import abi
from kvmctl.units import HUGE_2M, PAGE_SIZE

GIB = 1 << 30

GDT_GPA = 0x0
IDT_GPA = 0x1000
TSS_SIZE = 104 + 8192 + 1  # header, I/O bitmap for 65536 ports, terminating 0xff byte
TSS_STRIDE = 3 * PAGE_SIZE
CODE_GPA = 0x10000
CODE_MAX = 0x10000
MAILBOX_GPA = 0x20000
USER_STACK_SIZE = 16 * 1024
KERNEL_STACK_SIZE = 8 * 1024
MAX_VCPUS = 64

SEL_KCODE, SEL_KDATA, SEL_UDATA, SEL_UCODE, SEL_TSS0 = 0x08, 0x10, 0x18, 0x20, 0x28

PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A
LEAF_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 0x10000, 0x80000000
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 0x20, 0x200, 0x400
EFER_LME, EFER_LMA = 0x100, 0x400
RFLAGS_RESERVED, RFLAGS_IOPL3 = 0x2, 0x3000


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass(frozen=True)
class SystemLayout:
    """Where everything in the system area lives, for ``vcpus`` vCPUs."""

    vcpus: int
    tss_base: int
    user_stacks: int
    kernel_stacks: int
    page_tables: int
    page_table_bytes: int
    size: int  # of the system memslot, 2 MiB multiple

    @classmethod
    def plan(cls, vcpus: int, regions: list[tuple[int, int]], guest_page: int) -> "SystemLayout":
        tss = _round_up(MAILBOX_GPA + vcpus * PAGE_SIZE, PAGE_SIZE)
        user = tss + vcpus * TSS_STRIDE
        kern = user + vcpus * USER_STACK_SIZE
        pts = kern + vcpus * KERNEL_STACK_SIZE
        size = HUGE_2M
        while True:  # the page tables map the system area itself, so iterate to a fixed point
            nbytes = page_table_bytes([(0, size)] + regions, guest_page)
            need = _round_up(pts + nbytes, HUGE_2M)
            if need <= size:
                return cls(vcpus, tss, user, kern, pts, nbytes, size)
            size = need

    def mailbox(self, i: int) -> int:
        return MAILBOX_GPA + i * PAGE_SIZE

    def user_stack_top(self, i: int) -> int:
        return self.user_stacks + (i + 1) * USER_STACK_SIZE

    def kernel_stack_top(self, i: int) -> int:
        return self.kernel_stacks + (i + 1) * KERNEL_STACK_SIZE

    def tss(self, i: int) -> int:
        return self.tss_base + i * TSS_STRIDE


def _chunks(regions: list[tuple[int, int]], guest_page: int) -> tuple[list[int], list[int]]:
    """2 MiB chunk addresses needing a PT page, and the 1 GiB ranges needing a PD page."""
    pt_chunks: list[int] = []
    gibs: set[int] = set()
    for gpa, size in regions:
        for c in range(gpa, gpa + size, HUGE_2M):
            gibs.add(c // GIB)
        if gpa == 0 or guest_page == PAGE_SIZE:  # the system area is always 4 KiB mapped
            pt_chunks.extend(range(gpa, gpa + size, HUGE_2M))
    return pt_chunks, sorted(gibs)


def page_table_bytes(regions: list[tuple[int, int]], guest_page: int) -> int:
    pt_chunks, gibs = _chunks(regions, guest_page)
    return (2 + len(gibs) + len(pt_chunks)) * PAGE_SIZE


def build_page_tables(mem: np.ndarray, base: int, regions: list[tuple[int, int]], guest_page: int) -> int:
    """Write identity-mapping page tables at GPA ``base`` of ``mem`` (the
    system area as uint64 words); returns CR3. Regions are 2 MiB aligned."""
    for gpa, size in regions:
        if gpa % HUGE_2M or size % HUGE_2M:
            raise ValueError(f"region {gpa:#x}+{size:#x} is not 2 MiB aligned")
        if gpa + size > 512 * GIB:
            raise ValueError("regions beyond 512 GiB need a second PML4 entry")
    pt_chunks, gibs = _chunks(regions, guest_page)
    words = mem  # uint64 view of the system area
    pml4, pdpt = base, base + PAGE_SIZE
    pd_of = {g: base + (2 + i) * PAGE_SIZE for i, g in enumerate(gibs)}
    pt_base = base + (2 + len(gibs)) * PAGE_SIZE
    words[pml4 // 8 : pml4 // 8 + 1024] = 0  # PML4 and PDPT
    words[pml4 // 8] = pdpt | TABLE_FLAGS
    for g, pd in pd_of.items():
        words[pd // 8 : pd // 8 + 512] = 0
        words[pdpt // 8 + g] = pd | TABLE_FLAGS
    # 4 KiB leaves: contiguous PT pages, one per 2 MiB chunk, filled at once
    if pt_chunks:
        chunks = np.asarray(pt_chunks, dtype=np.uint64)
        pages = (chunks[:, None] + np.arange(512, dtype=np.uint64) * PAGE_SIZE).ravel()
        start = pt_base // 8
        words[start : start + pages.size] = pages | np.uint64(LEAF_FLAGS)
        pts = pt_base + np.arange(len(pt_chunks), dtype=np.uint64) * PAGE_SIZE
        for (chunk, pt) in zip(pt_chunks, pts.tolist()):
            words[pd_of[chunk // GIB] // 8 + (chunk // HUGE_2M) % 512] = pt | TABLE_FLAGS
    # 2 MiB leaves for data regions when asked for
    if guest_page == HUGE_2M:
        for gpa, size in regions:
            if gpa == 0:
                continue
            for chunk in range(gpa, gpa + size, HUGE_2M):
                words[pd_of[chunk // GIB] // 8 + (chunk // HUGE_2M) % 512] = chunk | LEAF_FLAGS | PTE_PS
    return pml4


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return (
        (limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | access << 40
        | ((limit >> 16) & 0xF) << 48
        | flags << 52
        | ((base >> 24) & 0xFF) << 56
    )


def build_gdt(mem: bytearray | memoryview, layout: SystemLayout) -> int:
    """Write the GDT; returns its limit."""
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0x9B, 0xA),  # kernel code64: P, DPL0, S, exec/read/accessed; G, L
        _descriptor(0, 0xFFFFF, 0x93, 0xC),  # kernel data
        _descriptor(0, 0xFFFFF, 0xF3, 0xC),  # user data, DPL3
        _descriptor(0, 0xFFFFF, 0xFB, 0xA),  # user code64, DPL3
    ]
    blob = b"".join(struct.pack("<Q", e) for e in entries)
    for i in range(layout.vcpus):
        tss = layout.tss(i)
        low = _descriptor(tss, TSS_SIZE - 1, 0x8B, 0x0)  # present, 64-bit TSS (busy)
        blob += struct.pack("<QQ", low, tss >> 32)
    mem[GDT_GPA : GDT_GPA + len(blob)] = blob
    return len(blob) - 1


def build_idt(mem, stubs_gpa: int) -> int:
    """32 interrupt gates (DPL0, IST 0) to the payload's exception stubs."""
    blob = b""
    for vec in range(32):
        handler = stubs_gpa + 16 * vec
        low = (handler & 0xFFFF) | SEL_KCODE << 16 | 0x8E << 40 | ((handler >> 16) & 0xFFFF) << 48
        blob += struct.pack("<QQ", low, handler >> 32)
    mem[IDT_GPA : IDT_GPA + len(blob)] = blob
    return len(blob) - 1


def build_tss(mem, layout: SystemLayout, i: int, mailbox_gva: int) -> None:
    """TSS with RSP0 16 bytes below the kernel stack top; the mailbox
    address sits 8 bytes above RSP0 for the exception stubs."""
    top = layout.kernel_stack_top(i)
    rsp0 = top - 16
    tss = layout.tss(i)
    mem[tss : tss + TSS_SIZE] = bytes(TSS_SIZE - 1) + b"\xff"  # all-zero bitmap: every port allowed
    struct.pack_into("<Q", mem, tss + 4, rsp0)
    struct.pack_into("<H", mem, tss + 102, 104)  # the I/O bitmap follows the 104-byte header
    struct.pack_into("<Q", mem, top - 8, mailbox_gva)


def _segment(selector: int, code: bool, dpl: int) -> abi.kvm_segment:
    return abi.kvm_segment(
        base=0, limit=0xFFFFFFFF, selector=selector | dpl, type=0xB if code else 0x3, present=1, dpl=dpl,
        db=0 if code else 1, s=1, l=1 if code else 0, g=1,
    )


def long_mode_sregs(sregs: abi.kvm_sregs, layout: SystemLayout, gdt_limit: int, idt_limit: int, cr3: int,
                    vcpu: int, cpl: int) -> abi.kvm_sregs:
    code_sel, data_sel = (SEL_UCODE, SEL_UDATA) if cpl == 3 else (SEL_KCODE, SEL_KDATA)
    sregs.cs = _segment(code_sel, True, cpl)
    data = _segment(data_sel, False, cpl)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = abi.kvm_segment(base=layout.tss(vcpu), limit=TSS_SIZE - 1, selector=SEL_TSS0 + 16 * vcpu, type=0xB,
                               present=1, s=0)
    sregs.ldt = abi.kvm_segment(selector=0, type=0x2, present=0, unusable=1)
    sregs.gdt = abi.kvm_dtable(base=GDT_GPA, limit=gdt_limit)
    sregs.idt = abi.kvm_dtable(base=IDT_GPA, limit=idt_limit)
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.cr3 = cr3
    sregs.efer = EFER_LME | EFER_LMA
    return sregs


def entry_regs(rip: int, rsp: int, mailbox: int, cpl: int) -> abi.kvm_regs:
    regs = abi.kvm_regs()
    regs.rip, regs.rsp, regs.rdi, regs.r15 = rip, rsp, mailbox, mailbox
    regs.rflags = RFLAGS_RESERVED | (RFLAGS_IOPL3 if cpl == 3 else 0)
    return regs


def u64_view(buf_address: int, size: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_char * size).from_address(buf_address), dtype=np.uint64)
