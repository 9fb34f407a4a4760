"""Lock contention as a reader wants it: one row per caller, every caller named.

The tracer keys a wait by {stack, waiter, lock address}, so one caller can
fill several rows (other stacks, waiters or locks) and waits of tasks whose
stacks were not collected have no caller at all. Both renderers show
:func:`by_caller`: rows merged per caller and lock type the way ``perf lock
contention`` aggregates by caller, the waiters kept as a list, and a caller
in words where there is no frame to name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvmctl.report.schema import ContentionRow, WaiterClass

# Stacks are collected for this VM's threads and the agers only (ebpf/locks.c); a missing one
# from them means get_stackid failed.
NO_STACK = {WaiterClass.OTHER: "[other task, no stack]", WaiterClass.VM: "[vCPU, stack lost]",
            WaiterClass.AGER: "[ager, stack lost]"}
MMU_LOCK_MARK = "*"
MMU_LOCK_LEGEND = "* = this VM's mmu_lock"


@dataclass
class CallerRow:
    caller: str
    lock_type: str
    is_mmu_lock: bool
    contended: int = 0
    total_wait_ns: int = 0
    max_wait_ns: int = 0
    waiters: list[str] = field(default_factory=list)  # waiter classes, largest total wait first

    @property
    def avg_wait_ns(self) -> int:
        return self.total_wait_ns // self.contended if self.contended else 0

    @property
    def kind(self) -> str:
        """The type column: 'rwlock:W*' for this VM's mmu_lock."""
        return self.lock_type + (MMU_LOCK_MARK if self.is_mmu_lock else "")


def caller_name(row: ContentionRow) -> str:
    return row.caller or NO_STACK[row.waiter_class]


def by_caller(rows: Iterable[ContentionRow]) -> list[CallerRow]:
    """Rows merged per (caller, lock type, mmu_lock or not), largest total wait first."""
    merged: dict[tuple, CallerRow] = {}
    waits: dict[tuple, dict[str, int]] = {}
    for r in rows:
        key = (caller_name(r), r.lock_type, r.is_mmu_lock)
        m = merged.setdefault(key, CallerRow(*key))
        m.contended += r.contended
        m.total_wait_ns += r.total_wait_ns
        m.max_wait_ns = max(m.max_wait_ns, r.max_wait_ns)
        per = waits.setdefault(key, {})
        per[r.waiter_class.value] = per.get(r.waiter_class.value, 0) + r.total_wait_ns
    for key, m in merged.items():
        m.waiters = sorted(waits[key], key=lambda w: (-waits[key][w], w))
    return sorted(merged.values(), key=lambda r: (-r.total_wait_ns, r.caller, r.lock_type))


def legend(rows: Iterable[CallerRow]) -> str:
    """The mark's legend when a row carries it; else say that no row is mmu_lock."""
    if any(r.is_mmu_lock for r in rows):
        return MMU_LOCK_LEGEND
    return "no row is this VM's mmu_lock"
