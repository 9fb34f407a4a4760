"""Long-mode structures built in plain memory and decoded back in Python.

A small page walker reads the generated tables the way the MMU does, so the
identity mapping with P|RW|US is checked without running a guest.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kvmctl.guest import longmode as lm

MIB, GIB, PAGE = 1 << 20, 1 << 30, 4096
ADDR_MASK = 0x000F_FFFF_FFFF_F000
USER_RW = lm.PTE_P | lm.PTE_RW | lm.PTE_US


class NotMapped(Exception):
    pass


def walk(words: np.ndarray, cr3: int, va: int) -> tuple[int, int, list[int]]:
    """(physical address, leaf size, entries on the way) for ``va``, as the MMU walks it."""
    table, entries = cr3, []
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = int(words[(table + ((va >> shift) & 511) * 8) // 8])
        if not entry & lm.PTE_P:
            raise NotMapped(f"{va:#x}: level {4 - level} entry not present")
        entries.append(entry)
        if entry & lm.PTE_PS:
            assert shift == 21, "only 2 MiB leaves are expected"
            return (entry & ADDR_MASK & ~(2 * MIB - 1)) | (va & (2 * MIB - 1)), 2 * MIB, entries
        table = entry & ADDR_MASK
    return table | (va & (PAGE - 1)), PAGE, entries


def build(vcpus: int, regions: list[tuple[int, int]], guest_page: int):
    layout = lm.SystemLayout.plan(vcpus, regions, guest_page)
    mem = np.zeros(layout.size // 8, dtype=np.uint64)
    cr3 = lm.build_page_tables(mem, layout.page_tables, [(0, layout.size)] + regions, guest_page)
    return layout, mem, cr3


def sample_pages(gpa: int, size: int, rng: np.random.Generator, n: int = 300) -> list[int]:
    """First, last, every 2 MiB / 1 GiB boundary region and random pages of a region."""
    pages = size // PAGE
    picks = {0, 1, pages - 1, *rng.integers(0, pages, n).tolist()}
    for chunk in range(0, size, 2 * MIB):
        picks.update({chunk // PAGE, chunk // PAGE + 511})
    return sorted(gpa + p * PAGE for p in picks if 0 <= p < pages)


LAYOUTS = {
    "one 64M region": (1, [(4 * GIB, 64 * MIB)], PAGE),
    "region across a 1G boundary": (2, [(4 * GIB + GIB - 4 * MIB, 8 * MIB)], PAGE),
    "three slots with a gap": (4, [(4 * GIB, 2 * MIB), (4 * GIB + 2 * MIB, 4 * MIB), (6 * GIB, 2 * MIB)], PAGE),
    "2M guest pages": (2, [(4 * GIB, 16 * MIB), (4 * GIB + 16 * MIB, 16 * MIB)], 2 * MIB),
    "many vCPUs": (64, [(4 * GIB, 2 * MIB)], PAGE),
}


@pytest.mark.parametrize("case", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_every_sampled_page_maps_identity_user_rw(case):
    vcpus, regions, guest_page = case
    layout, mem, cr3 = build(vcpus, regions, guest_page)
    rng = np.random.default_rng(1)
    for gpa, size in [(0, layout.size)] + regions:
        for va in sample_pages(gpa, size, rng):
            for offset in (0, 8, PAGE - 8):
                pa, leaf, entries = walk(mem, cr3, va + offset)
                assert pa == va + offset
                assert all(e & USER_RW == USER_RW for e in entries), [hex(e) for e in entries]
                want_leaf = PAGE if gpa == 0 else guest_page  # the system area is always 4 KiB
                assert leaf == want_leaf
                assert entries[-1] & lm.PTE_A and entries[-1] & lm.PTE_D  # preset: walks never write


@pytest.mark.parametrize("case", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_nothing_else_is_mapped(case):
    vcpus, regions, guest_page = case
    layout, mem, cr3 = build(vcpus, regions, guest_page)
    mapped = [(0, layout.size)] + regions
    for gpa, size in mapped:
        end = gpa + size
        if not any(g <= end < g + s for g, s in mapped):
            with pytest.raises(NotMapped):
                walk(mem, cr3, end)
    for va in (2 * GIB, 8 * GIB, 300 * GIB, (1 << 47) - PAGE):
        with pytest.raises(NotMapped):
            walk(mem, cr3, va)


def test_page_tables_fit_the_plan():
    layout, mem, cr3 = build(2, [(4 * GIB, GIB)], PAGE)
    assert cr3 == layout.page_tables
    assert layout.page_tables + layout.page_table_bytes <= layout.size
    assert layout.size % (2 * MIB) == 0
    # PML4 + PDPT + 2 PDs (GiB 0 and 4) + one PT per 2 MiB: 512 for the data, the rest for the system area
    assert layout.page_table_bytes == (2 + 2 + 512 + layout.size // (2 * MIB)) * PAGE
    # the areas the plan hands out do not overlap
    spans = [(lm.MAILBOX_GPA, layout.tss_base), (layout.tss_base, layout.user_stacks),
             (layout.user_stacks, layout.kernel_stacks), (layout.kernel_stacks, layout.page_tables),
             (layout.page_tables, layout.page_tables + layout.page_table_bytes)]
    assert all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:]))
    assert lm.CODE_GPA + lm.CODE_MAX <= lm.MAILBOX_GPA


def test_unaligned_region_is_rejected():
    mem = np.zeros(2 * MIB // 8, dtype=np.uint64)
    with pytest.raises(ValueError):
        lm.build_page_tables(mem, 0x100000, [(4 * GIB + PAGE, 2 * MIB)], PAGE)


# --- GDT, IDT, TSS, registers -------------------------------------------------------------------


def decode(desc: int) -> dict:
    access, flags = (desc >> 40) & 0xFF, (desc >> 52) & 0xF
    return {
        "base": ((desc >> 16) & 0xFFFFFF) | ((desc >> 56) & 0xFF) << 24,
        "limit": (desc & 0xFFFF) | ((desc >> 48) & 0xF) << 16,
        "type": access & 0xF, "s": access >> 4 & 1, "dpl": access >> 5 & 3, "present": access >> 7,
        "avl": flags & 1, "l": flags >> 1 & 1, "db": flags >> 2 & 1, "g": flags >> 3 & 1,
    }


@pytest.fixture(scope="module")
def system():
    layout = lm.SystemLayout.plan(3, [(4 * GIB, 2 * MIB)], PAGE)
    mem = bytearray(layout.size)
    gdt_limit = lm.build_gdt(memoryview(mem), layout)
    return layout, mem, gdt_limit


def gdt_entry(mem: bytearray, selector: int) -> int:
    return struct.unpack_from("<Q", mem, lm.GDT_GPA + (selector & ~7))[0]


CODE_XRA, DATA_RWA, TSS_BUSY = 0xB, 0x3, 0xB
SEGMENTS = {  # selector: what the descriptor must say
    lm.SEL_KCODE: dict(type=CODE_XRA, s=1, dpl=0, present=1, l=1, db=0),
    lm.SEL_KDATA: dict(type=DATA_RWA, s=1, dpl=0, present=1, db=1),
    lm.SEL_UDATA: dict(type=DATA_RWA, s=1, dpl=3, present=1, db=1),
    lm.SEL_UCODE: dict(type=CODE_XRA, s=1, dpl=3, present=1, l=1, db=0),
}


def test_gdt_segments(system):
    layout, mem, gdt_limit = system
    assert gdt_limit + 1 == lm.SEL_TSS0 + 16 * layout.vcpus
    assert gdt_entry(mem, 0) == 0
    for sel, want in SEGMENTS.items():
        d = decode(gdt_entry(mem, sel))
        assert {k: d[k] for k in want} == want, hex(sel)
        assert d["g"] == 1 and d["limit"] == 0xFFFFF and d["base"] == 0


def test_gdt_tss_descriptors(system):
    layout, mem, _ = system
    for i in range(layout.vcpus):
        sel = lm.SEL_TSS0 + 16 * i
        low, high = struct.unpack_from("<QQ", mem, sel)
        d = decode(low)
        assert (d["type"], d["s"], d["present"], d["dpl"]) == (TSS_BUSY, 0, 1, 0)
        assert d["base"] | (high & 0xFFFFFFFF) << 32 == layout.tss(i)
        assert d["limit"] == lm.TSS_SIZE - 1


@pytest.mark.parametrize("cpl", [3, 0])
def test_sregs_agree_with_the_gdt(system, cpl):
    """KVM caches the sregs, an iret reloads from the GDT: both must say the same."""
    layout, mem, gdt_limit = system
    from kvmctl.kvm import abi

    s = lm.long_mode_sregs(abi.kvm_sregs(), layout, gdt_limit, 0xFF, 0x5000, 1, cpl)
    for seg in (s.cs, s.ds, s.es, s.ss):
        d = decode(gdt_entry(mem, seg.selector))
        assert seg.selector & 3 == cpl == seg.dpl == d["dpl"]
        assert (seg.type, seg.s, seg.l, seg.db, seg.g, seg.present) == (
            d["type"], d["s"], d["l"], d["db"], d["g"], d["present"])
    assert s.cs.l == 1 and s.tr.base == layout.tss(1) and s.tr.selector == lm.SEL_TSS0 + 16
    assert s.tr.type == TSS_BUSY and s.ldt.unusable == 1
    assert s.cr0 & lm.CR0_PG and s.cr0 & lm.CR0_PE and s.cr4 & lm.CR4_PAE
    assert s.efer & lm.EFER_LME and s.efer & lm.EFER_LMA and s.cr3 == 0x5000
    assert (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit) == (lm.GDT_GPA, gdt_limit, lm.IDT_GPA, 0xFF)


def test_idt_gates():
    mem = bytearray(8192)
    stubs = lm.CODE_GPA + 0x140
    limit = lm.build_idt(memoryview(mem), stubs)
    assert limit == 32 * 16 - 1
    for vec in range(32):
        low, high = struct.unpack_from("<QQ", mem, lm.IDT_GPA + 16 * vec)
        offset = (low & 0xFFFF) | ((low >> 48) & 0xFFFF) << 16 | (high & 0xFFFFFFFF) << 32
        assert offset == stubs + 16 * vec
        assert (low >> 16) & 0xFFFF == lm.SEL_KCODE
        access = (low >> 40) & 0xFF
        assert access == 0x8E  # present, DPL0, 64-bit interrupt gate
        assert (low >> 32) & 7 == 0  # IST 0: the TSS's RSP0 stack


def test_tss_stack_io_bitmap_and_mailbox(system):
    layout, _, _ = system
    mem = bytearray(layout.size)
    lm.build_tss(memoryview(mem), layout, 2, layout.mailbox(2))
    tss = layout.tss(2)
    rsp0 = struct.unpack_from("<Q", mem, tss + 4)[0]
    assert rsp0 == layout.kernel_stack_top(2) - 16
    iomap = struct.unpack_from("<H", mem, tss + 102)[0]
    assert iomap == 104
    bitmap = mem[tss + iomap : tss + lm.TSS_SIZE]
    assert len(bitmap) == 8192 + 1 and not any(bitmap[:-1]) and bitmap[-1] == 0xFF  # every port allowed
    assert struct.unpack_from("<Q", mem, rsp0 + 8)[0] == layout.mailbox(2)  # for the exception stubs
    assert tss + lm.TSS_SIZE <= layout.user_stacks  # the last vCPU's TSS ends before the stacks


@pytest.mark.parametrize("cpl,iopl", [(3, 3), (0, 0)])
def test_entry_regs(cpl, iopl):
    r = lm.entry_regs(0x10020, 0x40000, 0x20000, cpl)
    assert (r.rip, r.rsp, r.rdi, r.r15) == (0x10020, 0x40000, 0x20000, 0x20000)
    assert (r.rflags >> 12) & 3 == iopl and r.rflags & 2  # bit 1 is always set
    assert not r.rflags & 0x200  # interrupts stay off: no interrupt controller
