"""Plain records the tracer hands out, and the kernel-side enums they index.

The enums mirror the ones in ebpf/*.c (a unit test parses the C sources and
compares); the task and waiter classes, shared with the report, live in
:mod:`kvmctl.vocab`. Records carry counts exactly as the maps held them: what a number
means is decided by experiment/ and report/, not here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from kvmctl.kvm.memslot import Memslot
from kvmctl.vocab import Bucket, TaskClass, TraceWindow, WaiterClass



class Cfg(enum.IntEnum):
    """Configuration words of every program (ebpf/ranges.h enum cfg)."""

    NR_RANGES = 0
    VM_TGID = 1
    START_NS = 2
    END_NS = 3


class EventKind(enum.IntEnum):
    """ebpf/aging.c enum event_kind: which mmu-notifier tracepoint fired."""

    AGE = 0  # kvm:kvm_age_hva (clear_young, clear_flush_young)
    TEST_AGE = 1  # kvm:kvm_test_age_hva (test_young)
    UNMAP = 2  # kvm:kvm_unmap_hva_range (invalidate_range_start)

    @property
    def label(self) -> str:
        return self.name.lower()


class AgingLost(enum.IntEnum):
    """ebpf/aging.c enum aging_lost."""

    TASKS_FULL = 0
    BUCKET_OVERFLOW = 1
    GFN_CLIPPED = 2
    GFN_INDEX = 3


class SpteCount(enum.IntEnum):
    """ebpf/spte.c enum spte_count."""

    SET_SPTE = 0
    REFAULT = 1
    SP_CREATED = 2
    SP_EXISTING = 3
    SPTE_CHANGED = 4
    BITS_CLEARED = 5


class SpteLost(enum.IntEnum):
    """ebpf/spte.c enum spte_lost."""

    GFN_INDEX = 0
    AGING_TIDS_FULL = 1


class LocksLost(enum.IntEnum):
    """ebpf/locks.c enum locks_lost."""

    THREADS_FULL = 0
    NO_BEGIN = 1
    STACK = 2  # counted, without a stack: a partial record, not a lost event
    ENTRIES_FULL = 3


class FuncRole(enum.IntEnum):
    """ebpf/funcs.c enum fn_role: what a probed aging function is."""

    OUTER_AGE = 0  # kvm_age_gfn: the arch entry of clear_young
    OUTER_TEST = 1  # kvm_test_age_gfn: the arch entry of test_young
    TDP = 2  # the TDP MMU walker
    RMAP = 3  # the rmap walker
    OTHER = 4  # e.g. a test_clear_young notifier of a patched kernel


class FuncsLost(enum.IntEnum):
    """ebpf/funcs.c enum funcs_lost."""

    ENTRY_FULL = 0
    NO_ENTRY = 1


class AgingPath(enum.IntEnum):
    """Path bits an outer aging call collected (ebpf/funcs.c enum path_bits)."""

    NONE = 0
    TDP = 1
    RMAP = 2
    BOTH = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass
class TraceTarget:
    """What to trace: the VM process, its memslots and our own ager threads."""

    vm_tgid: int
    memslots: list[Memslot]
    ager_tids: set[int] = field(default_factory=set)

    @property
    def guest_pages(self) -> int:
        return sum(m.pages for m in self.memslots)

    def index_bases(self) -> list[int]:
        """Per-gfn array index of each memslot's first page (memslots laid end to end)."""
        bases, base = [], 0
        for m in self.memslots:
            bases.append(base)
            base += m.pages
        return bases


@dataclass
class CallCount:
    calls: int = 0
    pages: int = 0


@dataclass
class TaskCount:
    """Aging calls one task made on our memory."""

    pid: int
    tgid: int
    comm: str
    kind: str
    calls: int
    pages: int


@dataclass
class AgingCounts:
    """kvm_age_hva & co. on our memslots: by kind and task class, and by task."""

    by_kind_class: dict[str, dict[str, CallCount]]
    by_task: list[TaskCount]

    def total(self, kind: EventKind, classes: tuple[TaskClass, ...] | None = None) -> CallCount:
        row = self.by_kind_class.get(kind.label, {})
        wanted = {c.value for c in (classes or tuple(TaskClass))}
        out = CallCount()
        for label, cc in row.items():
            if label in wanted:
                out.calls += cc.calls
                out.pages += cc.pages
        return out


@dataclass
class AgingSeries:
    """Calls and pages per time bucket: arrays shaped (buckets, kinds, classes)."""

    start_ns: int
    bucket_ns: int
    calls: np.ndarray
    pages: np.ndarray


@dataclass
class PerGfnCounts:
    """Per-page counters indexed like TraceTarget.index_bases(); ``cap`` pages at most."""

    memslots: list[Memslot]
    cap: int
    by_kind: dict[str, np.ndarray]  # EventKind label -> uint64 array of cap entries

    def by_memslot(self, kind: EventKind) -> list[tuple[Memslot, np.ndarray]]:
        """Each memslot with the counts of its pages (index i is gfn m.gfn_start + i), cut at the cap."""
        out, base = [], 0
        for m in self.memslots:
            out.append((m, self.by_kind[kind.label][base:min(base + m.pages, self.cap)]))
            base += m.pages
        return out


@dataclass
class SpteCounts:
    set_spte: int
    refaults: int
    shadow_pages_created: int
    shadow_pages_existing: int
    spte_changed: int | None  # None: kvm_tdp_mmu_spte_changed not attached
    bits_cleared: int | None
    set_levels: dict[int, int]
    shadow_page_levels: dict[int, int]
    mappings_per_gfn: np.ndarray
    cleared_per_gfn: np.ndarray | None


@dataclass
class ContentionRow:
    """One {stack, waiter class, lock} key of lock:contention_*, perf-lock style."""

    stack_id: int
    waiter: WaiterClass
    lock_addr: int
    lock_type: str
    caller: str
    stack: list[str]
    total_ns: int
    max_ns: int
    count: int
    mmu_lock: bool

    @property
    def avg_ns(self) -> float:
        return self.total_ns / self.count if self.count else 0.0


@dataclass
class FuncLatency:
    """One probed kernel function."""

    function: str
    role: str
    calls: int
    nonzero: int  # returned true (young)
    ret_sum: int
    total_ns: int
    max_ns: int
    hist: list[Bucket]


@dataclass
class TraceResult:
    """Everything one trace window produced; None where the probe was not attached."""

    window: TraceWindow
    chosen: dict[str, str]
    not_observable: dict[str, str]
    aging: AgingCounts | None = None
    series: AgingSeries | None = None
    per_gfn: PerGfnCounts | None = None
    spte: SpteCounts | None = None
    contention: list[ContentionRow] | None = None
    wait_hist: dict[WaiterClass, list[Bucket]] | None = None
    funcs: list[FuncLatency] | None = None
    paths: dict[str, dict[str, int]] | None = None  # "age"/"test_age" -> path label -> calls
    lost: dict[str, int] = field(default_factory=dict)  # events missing from some count, by cause
    partial: dict[str, int] = field(default_factory=dict)  # events counted without a detail (e.g. their stack)
    notes: list[str] = field(default_factory=list)

    @property
    def lost_events(self) -> int:
        return sum(self.lost.values())
