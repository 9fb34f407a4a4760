"""Lock types, callers and mmu_lock recognition from kernel stacks."""

from __future__ import annotations

import pytest

from kvmctl.trace.stacks import (
    LockFlag,
    caller_of,
    is_kvm_mmu_frame,
    lock_type,
    looks_like_mmu_lock,
    mmu_lock_addresses,
)

VCPU_FAULT = ["queued_write_lock_slowpath", "_raw_write_lock", "direct_page_fault+0x2a4", "kvm_mmu_page_fault",
              "vcpu_enter_guest", "kvm_arch_vcpu_ioctl_run"]
AGING_61 = ["queued_write_lock_slowpath", "_raw_write_lock", "kvm_mmu_notifier_clear_flush_young+0x5e",
            "__mmu_notifier_clear_flush_young", "folio_referenced_one"]
MMAP_LOCK = ["rwsem_down_read_slowpath", "down_read_killable", "lock_mm_and_find_vma", "exc_page_fault"]
GUP_IN_FAULT = ["rwsem_down_read_slowpath", "down_read", "hva_to_pfn", "kvm_faultin_pfn", "kvm_mmu_page_fault"]
PTL = ["native_queued_spin_lock_slowpath", "_raw_spin_lock", "zap_pte_range", "unmap_page_range"]


@pytest.mark.parametrize(("flags", "name"), [
    (LockFlag.SPIN, "spinlock"),
    (LockFlag.SPIN | LockFlag.WRITE, "rwlock:W"),
    (LockFlag.SPIN | LockFlag.READ, "rwlock:R"),
    (LockFlag.READ, "rwsem:R"),
    (LockFlag.WRITE, "rwsem:W"),
    (LockFlag.MUTEX, "mutex"),
    (LockFlag.MUTEX | LockFlag.SPIN, "mutex-spin"),
    (LockFlag.PERCPU | LockFlag.READ, "pcpu-sem:R"),
    (0, "semaphore"),
    (0x40, "flags=0x40"),
])
def test_lock_type_names_follow_perf(flags, name):
    assert lock_type(flags) == name


def test_caller_is_the_first_frame_outside_locking_code():
    assert caller_of(VCPU_FAULT) == "direct_page_fault+0x2a4"
    assert caller_of(MMAP_LOCK) == "lock_mm_and_find_vma"
    assert caller_of(["_raw_spin_lock", "queued_spin_lock_slowpath"]) == "queued_spin_lock_slowpath"
    assert caller_of([]) == ""


def test_kvm_mmu_frames_include_clones_and_offsets():
    assert is_kvm_mmu_frame("kvm_rmap_age_gfn_range.isra.0+0x10")
    assert is_kvm_mmu_frame("kvm_tdp_mmu_map")
    assert not is_kvm_mmu_frame("zap_pte_range")
    assert not is_kvm_mmu_frame("kvm_vcpu_ioctl")


def test_mmu_lock_needs_a_spinning_lock_taken_by_kvm_mmu_code():
    write = LockFlag.SPIN | LockFlag.WRITE
    assert looks_like_mmu_lock(VCPU_FAULT, write)
    assert looks_like_mmu_lock(AGING_61, write)
    assert not looks_like_mmu_lock(GUP_IN_FAULT, LockFlag.READ)  # mmap_lock inside a KVM fault
    assert not looks_like_mmu_lock(PTL, LockFlag.SPIN)  # page table lock in core mm
    assert not looks_like_mmu_lock(VCPU_FAULT, LockFlag.MUTEX)


def test_mmu_lock_addresses_come_from_recognized_waits_only():
    write = LockFlag.SPIN | LockFlag.WRITE
    waits = [(VCPU_FAULT, write, 0xA), (PTL, LockFlag.SPIN, 0xB), ([], write, 0xA), (MMAP_LOCK, LockFlag.READ, 0xC)]
    assert mmu_lock_addresses(waits) == {0xA}
