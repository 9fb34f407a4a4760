"""The BPF aging counts equal an independent count through a tracefs instance.

A file-backed VM runs in a child process in its own memory cgroup; this test
thread squeezes the cgroup (memcg reclaim: kvm_age_hva in our thread, the
"ours" class) while the host's kdamond ages in the background. A private
tracefs instance records kvm_age_hva, kvm_test_age_hva and
kvm_unmap_hva_range for the VM's hva range (ftrace filter), opened before the
tracer and closed after it.

Both sides count over the tracer's window [start_ns, end_ns): the BPF
programs compare bpf_ktime_get_ns() with it, the instance's lines carry
mono-clock timestamps. Tolerance: none, except for events that fall within
EDGE_NS of a window edge. An event's ftrace timestamp is taken when its ring
buffer slot is reserved, a few microseconds away from the bpf_ktime_get_ns()
read of the same event, and ftrace prints microseconds; such an event may
land on either side of the edge. They are counted as "ambiguous" and the BPF
count must lie between the certain count and certain + ambiguous. With
~10^3 events/s and a 1.1 ms edge zone this is usually exactly equal.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest

from kvmctl.trace.catalogue import make_plan
from kvmctl.probe.tracing import require_tracefs
from kvmctl.kvm import Memslot
from kvmctl.trace.records import EventKind
from kvmctl.vocab import TaskClass
from kvmctl.trace.tracer import Tracer
from tests.helpers.vm import VmChild
from tests.helpers.tracefs import TraceLine, TracefsInstance

pytestmark = [pytest.mark.bpf, pytest.mark.kvm, pytest.mark.root, pytest.mark.slow]

SIZE = 64 << 20
EDGE_NS = 100_000 + 1000  # timestamp gap bound + print resolution
_RANGE_RE = re.compile(r"0x([0-9a-f]+) -- 0x([0-9a-f]+)")
_HVA_RE = re.compile(r"0x([0-9a-f]+)$")
_KIND_OF_EVENT = {"kvm_age_hva": EventKind.AGE, "kvm_test_age_hva": EventKind.TEST_AGE,
                  "kvm_unmap_hva_range": EventKind.UNMAP}


def _filters(m: Memslot) -> dict[str, str]:
    span = f"start < {m.hva_end} && end > {m.hva_start}"
    return {"kvm:kvm_age_hva": span, "kvm:kvm_unmap_hva_range": span,
            "kvm:kvm_test_age_hva": f"hva >= {m.hva_start} && hva < {m.hva_end}"}


def _pages(line: TraceLine, m: Memslot) -> int:
    if line.event == "kvm_test_age_hva":
        return 1
    start, end = (int(x, 16) for x in _RANGE_RE.search(line.text).groups())
    lo, hi = max(start, m.hva_start), min(end, m.hva_end)
    return ((hi - m.hva_start + 4095) >> 12) - ((lo - m.hva_start) >> 12)


def _task_class(line: TraceLine, ager_tid: int, vm_tgid_threads: set[int]) -> TaskClass:
    if line.pid == ager_tid:
        return TaskClass.OURS
    if line.comm.startswith("kswapd"):
        return TaskClass.KSWAPD
    if line.comm.startswith("kdamond"):
        return TaskClass.KDAMOND
    if line.pid in vm_tgid_threads:
        return TaskClass.VM
    return TaskClass.OTHER


def _threads(pid: int) -> set[int]:
    try:
        return {int(p.name) for p in Path(f"/proc/{pid}/task").iterdir()}
    except OSError:
        return set()


def test_bpf_aging_counts_match_tracefs_instance(own, offer, ager_tid):
    plan = make_plan(offer, wanted={"aging.calls", "aging.pages", "aging.test_calls", "aging.unmaps",
                                    "aging.per_gfn", "aging.timeseries"})
    assert plan.programs() == {"aging.c"}, plan.not_observable
    vm = VmChild(own, SIZE)
    try:
        (slot,) = vm.memslots
        assert vm.epoch("seq", write=True) > 0  # fault every page in, charged to the VM's cgroup
        vm_threads = _threads(vm.pid)
        with TracefsInstance(require_tracefs(), _filters(slot)) as inst:
            tracer = Tracer(plan, vm.target({ager_tid}))
            try:
                window = tracer.start()
                vm.epoch("seq", write=False)
                vm.cg.reclaim(SIZE // 2)  # in this thread: our ager
                vm.epoch("seq", write=False)  # refault what reclaim dropped
                time.sleep(0.3)
            finally:
                tracer.stop()
            inst.disable()
            result = tracer.collect()
            lines = inst.lines()
            assert inst.dropped == 0, f"the tracefs instance dropped {inst.dropped} events: enlarge its buffer"
    finally:
        vm.close()

    start, end = window.start_ns, window.end_ns
    certain: Counter = Counter()
    ambiguous: Counter = Counter()
    pages_certain: Counter = Counter()
    for line in lines:
        key = (_KIND_OF_EVENT[line.event], _task_class(line, ager_tid, vm_threads))
        if start + EDGE_NS <= line.ts_ns < end - EDGE_NS:
            certain[key] += 1
            pages_certain[key] += _pages(line, slot)
        elif start - EDGE_NS <= line.ts_ns < start + EDGE_NS or end - EDGE_NS <= line.ts_ns < end + EDGE_NS:
            ambiguous[key] += 1

    ours = result.aging.total(EventKind.AGE, (TaskClass.OURS,))
    assert ours.calls > 0, "memcg reclaim in this thread made no kvm_age_hva calls on the VM"
    for kind in EventKind:
        for cls in TaskClass:
            got = result.aging.by_kind_class[kind.label][cls.value]
            lo, slack = certain[(kind, cls)], ambiguous[(kind, cls)]
            assert lo <= got.calls <= lo + slack, (
                f"{kind.label}/{cls.value}: BPF {got.calls} calls, tracefs instance {lo} (+{slack} at the edges)")
            if not slack:
                assert got.pages == pages_certain[(kind, cls)], f"{kind.label}/{cls.value}: pages differ"

    # The other views of the same events add up to the totals.
    for kind in EventKind:
        total = result.aging.total(kind)
        assert int(result.series.calls[:, kind, :].sum()) == total.calls
        assert int(result.series.pages[:, kind, :].sum()) == total.pages
        assert sum(t.calls for t in result.aging.by_task if t.kind == kind.label) == total.calls
        if result.partial["aging.gfn_clipped"] == 0:
            assert int(result.per_gfn.by_kind[kind.label].sum()) == total.pages
    # a page past the per-gfn loop bound is missing from the per-gfn view only, never from a total
    assert result.lost_events == 0, result.lost
