"""Kernel stacks of lock waits: lock type, caller, and whether it is mmu_lock.

perf lock contention names a wait by its caller, the first frame that is not
part of the locking code. KVM's mmu_lock (an rwlock on x86) has no symbol of
its own, so a wait is taken as an mmu_lock wait when that caller is KVM MMU
code and the lock is a spinning lock; every other wait on the same lock
address is then an mmu_lock wait too.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence

# lock:contention_begin flags (include/trace/events/lock.h LCB_F_*)


class LockFlag(enum.IntFlag):
    SPIN = 1 << 0
    READ = 1 << 1
    WRITE = 1 << 2
    RT = 1 << 3
    PERCPU = 1 << 4
    MUTEX = 1 << 5


# perf's lock_type_table, most specific first
_LOCK_TYPES: list[tuple[int, str]] = [
    (LockFlag.SPIN | LockFlag.READ, "rwlock:R"),
    (LockFlag.SPIN | LockFlag.WRITE, "rwlock:W"),
    (LockFlag.RT | LockFlag.READ, "rwlock-rt:R"),
    (LockFlag.RT | LockFlag.WRITE, "rwlock-rt:W"),
    (LockFlag.PERCPU | LockFlag.READ, "pcpu-sem:R"),
    (LockFlag.PERCPU | LockFlag.WRITE, "pcpu-sem:W"),
    (LockFlag.MUTEX | LockFlag.SPIN, "mutex-spin"),
    (LockFlag.SPIN, "spinlock"),
    (LockFlag.READ, "rwsem:R"),
    (LockFlag.WRITE, "rwsem:W"),
    (LockFlag.RT, "rt-mutex"),
    (LockFlag.MUTEX, "mutex"),
]


def lock_type(flags: int) -> str:
    for mask, name in _LOCK_TYPES:
        if flags == mask:
            return name
    return "semaphore" if flags == 0 else f"flags={flags:#x}"


def is_spinning(flags: int) -> bool:
    """A spinlock or rwlock (mmu_lock is one), as opposed to a sleeping lock."""
    return bool(flags & LockFlag.SPIN) and not flags & LockFlag.MUTEX


# Frames that belong to the locking code or to the tracing of it.
_LOCK_FRAME = re.compile(
    r"^(_raw_|__raw_|queued_|native_queued_|__pv_queued_|pv_queued_|do_raw_|"
    r"rwsem_|__rwsem_|down_|__down|up_|percpu_down_|percpu_rwsem_|"
    r"mutex_|__mutex_|__ww_mutex_|ww_mutex_|rt_mutex_|__rt_mutex_|rtlock_|rt_spin_|"
    r"osq_|lock_contended|__lock_|lock_acquire|_spin_lock|spin_lock|read_lock|write_lock|"
    r"trace_contention_|__traceiter_|__probestub_|perf_trace_|bpf_|__bpf_|"
    r"schedule|__schedule|preempt_schedule|io_schedule)"
)

# KVM x86 MMU code that takes mmu_lock.
_KVM_MMU_FRAME = re.compile(
    r"^(kvm_mmu_|__kvm_mmu_|kvm_tdp_mmu_|__kvm_tdp_mmu_|tdp_mmu_|kvm_tdp_page_fault|direct_page_fault|"
    r"paging(32|64|32E)?_|ept_page_fault|fast_page_fault|kvm_zap_|__kvm_zap_|"
    r"kvm_age_|kvm_test_age_|kvm_rmap_|kvm_unmap_gfn_range|kvm_handle_gfn_range|__kvm_handle_hva_range|"
    r"kvm_handle_hva_range|kvm_mmu_notifier_|mmu_free_roots|mmu_alloc_|kvm_arch_flush_shadow|"
    r"make_mmu_pages_available|kvm_recover_nx|kvm_nx_huge_page|kvm_arch_mmu_)"
)


def _bare(symbol: str) -> str:
    """'kvm_age_gfn+0x1c' or 'foo.isra.0' -> the function name."""
    name = symbol.split("+", 1)[0].strip()
    return name.split(".", 1)[0]


def is_lock_frame(symbol: str) -> bool:
    return bool(_LOCK_FRAME.match(_bare(symbol)))


def is_kvm_mmu_frame(symbol: str) -> bool:
    return bool(_KVM_MMU_FRAME.match(_bare(symbol)))


def caller_of(frames: Sequence[str]) -> str:
    """First frame (innermost first) outside the locking code; '' if none."""
    for sym in frames:
        if not is_lock_frame(sym):
            return sym
    return frames[-1] if frames else ""


def looks_like_mmu_lock(frames: Sequence[str], flags: int) -> bool:
    """A spinning-lock wait whose caller is KVM MMU code."""
    return is_spinning(flags) and is_kvm_mmu_frame(caller_of(frames))


def mmu_lock_addresses(waits: Iterable[tuple[Sequence[str], int, int]]) -> set[int]:
    """Lock addresses seen in mmu_lock waits, from (frames, flags, lock_addr) triples."""
    return {addr for frames, flags, addr in waits if looks_like_mmu_lock(frames, flags)}
