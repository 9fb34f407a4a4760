"""Idle page tracking on a kernel that has it (CONFIG_IDLE_PAGE_TRACKING; skipped here with the reason).

Mark every page idle, touch a known quarter, read back: the touched pages must
come back young, the rest idle -- first for a plain process (host page tables),
then for a VM, where only KVM's SPTEs see the guest's touches and the young
bits reach page_idle through the MMU notifier (kvm_test_age_hva/kvm_age_hva).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tests.helpers.agers import HOT as HOT_FRACTION
from tests.helpers.vm import VmChild

from kvmctl.kvm import Memslot
from kvmctl.agers import AgerContext, get_ager
from kvmctl.kvm import BackingKind

pytestmark = pytest.mark.root

SIZE = 16 << 20
VM_SIZE = 64 << 20  # small: these tests run in the emulated lab, ~17x slower
PAGES = SIZE // 4096
HOT = PAGES // 4

CHILD = textwrap.dedent("""
    import ctypes, mmap, sys
    m = mmap.mmap(-1, int(sys.argv[1]), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)            # one PFN per 4 KiB page
    def touch(n):
        for off in range(0, n * mmap.PAGESIZE, mmap.PAGESIZE):
            m[off] = (m[off] + 1) & 0xFF
    touch(len(m) // mmap.PAGESIZE)
    print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    for line in sys.stdin:                     # "touch N"
        touch(int(line.split()[1]))
        print("touched", flush=True)
""")


@pytest.fixture
def page_idle():
    ager = get_ager("page_idle")
    avail = ager.availability()
    if not avail.ok:
        pytest.skip(f"needs idle page tracking: {avail.reason} (fix: {avail.remedy})")
    yield ager
    ager.restore()


def _check(record, hot: np.ndarray) -> None:
    assert record.idle is not None and record.observed is not None
    observed = record.observed
    print(f"observed {observed.sum()} of {observed.size}; young among hot "
          f"{(~record.idle[hot & observed]).mean():.3f}; idle among cold {record.idle[~hot & observed].mean():.3f}")
    assert observed.mean() >= 0.99
    assert (~record.idle[hot & observed]).mean() >= 0.99
    assert record.idle[~hot & observed].mean() >= 0.9  # the selftest's tolerance: TLBs may hide a few


def test_process_pages(page_idle):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(SIZE)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        hva = int(child.stdout.readline())
        page_idle.prepare(AgerContext(None, child.pid, [Memslot.at(0, 0, SIZE, hva)]))
        first = page_idle.run_pass(0)
        assert first.idle is None and first.pages_marked_idle >= 0.99 * PAGES
        child.stdin.write(f"touch {HOT}\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "touched"
        hot = np.zeros(PAGES, dtype=bool)
        hot[:HOT] = True
        _check(page_idle.run_pass(1), hot)
    finally:
        child.stdin.close()
        child.wait(timeout=30)


@pytest.mark.kvm
@pytest.mark.parametrize("backing", [BackingKind.FILE, BackingKind.THP])
def test_guest_pages_through_kvm(page_idle, own, backing):
    """THP: the kernel keeps one idle flag per huge page (its head); the hot quarter is 8 whole THPs."""
    vm = VmChild(own, VM_SIZE, backing=backing)
    try:
        assert vm.epoch("seq", write=True) > 0
        # Clean pages first. Writeback write-protects a dirty page (page_mkclean), the MMU
        # notifier zaps KVM's SPTE, and KVM marks a page accessed when it drops an accessed
        # SPTE: that clears PG_idle. Unsynced, every page of a 256 MiB guest read back young
        # in the lab (background writeback started between mark and read); synced, 0.1 % in four
        # runs of five (the fifth is open: docs/lab.md).
        vm.sync()
        page_idle.prepare(AgerContext(vm.cg, vm.pid, vm.slot_refs()))
        page_idle.run_pass(0)
        assert vm.epoch(f"hotcold:{HOT_FRACTION}", write=False) > 0
        pages = VM_SIZE // 4096
        hot = np.zeros(pages, dtype=bool)
        hot[: round(HOT_FRACTION * pages)] = True
        _check(page_idle.run_pass(1), hot)
    finally:
        vm.close()
