"""lock:contention_begin/end in the perf-lock-contention shape, on contention we cause.

Four threads of this process map and unmap memory in a loop: they contend on
this process's mmap_lock (an rwsem). Registered as ager threads, their waits
must show up in the "ager" class with rwsem lock types, symbolized stacks
whose caller is outside the locking code, and histogram totals that equal
the per-key counts.
"""

from __future__ import annotations

import mmap
import threading
import time

import pytest

from kvmctl.trace import hist
from kvmctl.trace.catalogue import make_plan
from kvmctl.kvm import Memslot
from kvmctl.trace.records import TraceTarget
from kvmctl.trace.stacks import is_lock_frame
from kvmctl.trace.tracer import Tracer

pytestmark = [pytest.mark.bpf, pytest.mark.root]


def _hammer(stop: threading.Event, tids: list[int]) -> None:
    tids.append(threading.get_native_id())
    while not stop.is_set():
        with mmap.mmap(-1, 1 << 20) as m:
            m[0:1] = b"x"  # fault: mmap_lock for read; the mmap/munmap take it for write


def test_contention_rows_for_our_own_threads(offer):
    plan = make_plan(offer, wanted={"contention.locks", "contention.mmu_lock"})
    assert plan.programs() == {"locks.c"}, plan.not_observable
    # No VM here: a placeholder range that no aging event can hit.
    target = TraceTarget(vm_tgid=0, memslots=[Memslot.at(0, 0, 1 << 12, 1 << 12)])
    stop = threading.Event()
    tids: list[int] = []
    threads = [threading.Thread(target=_hammer, args=(stop, tids)) for _ in range(4)]
    with Tracer(plan, target) as tracer:
        for t in threads:
            t.start()
        while len(tids) < len(threads):
            time.sleep(0.01)
        for tid in tids:
            tracer.add_ager_tid(tid)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
    result = tracer.collect()

    ours = [r for r in result.contention if r.waiter == "ager"]
    assert ours, "four threads mapping and unmapping produced no mmap_lock contention"
    assert {r.lock_type for r in ours} <= {"rwsem:R", "rwsem:W", "mutex", "mutex-spin", "spinlock",
                                           "rwlock:R", "rwlock:W"}
    assert any(r.lock_type.startswith("rwsem") for r in ours)
    for r in ours:
        assert r.count > 0 and r.max_ns <= r.total_ns
        if r.stack:
            assert not r.stack[0].startswith("0x"), r.stack  # symbolized through /proc/kallsyms
            assert r.caller and not is_lock_frame(r.caller)
    assert not any(r.mmu_lock for r in ours), "mmap_lock waits taken for mmu_lock"
    for waiter, buckets in result.wait_hist.items():
        rows = [r for r in result.contention if r.waiter == waiter]
        if result.lost["locks.entries_full"] == 0:
            assert hist.hist_total(buckets) == sum(r.count for r in rows), waiter
    assert result.lost["locks.threads_full"] == result.lost["locks.entries_full"] == 0, result.lost
    assert "locks.stack" in result.partial and "locks.stack" not in result.lost
