"""Cross-checks of a whole experiment against independent counts.

(a) The report's aging counts equal an independent count of the same
    tracepoints: a private tracefs instance, opened right before the
    experiment attaches its BPF programs and read after they are detached,
    records kvm_age_hva, kvm_test_age_hva and kvm_unmap_hva_range filtered
    to the VM's memslot hva ranges. Both sides count over the report's
    trace window; per task and kind they must agree exactly. The only
    tolerance: an event within EDGE_NS of a window edge may fall on either
    side (ftrace stamps an event when it reserves its ring-buffer slot, a
    few microseconds from the BPF program's bpf_ktime_get_ns(), and prints
    microseconds), so the BPF count must lie in [certain, certain + edge].

(b) kvmmmu:kvm_mmu_set_spte mappings are reconciled with the VM's pages_4k
    stat. pages_4k is a gauge of present 4 KiB SPTEs in every memslot;
    set_spte counts mapping events of data gfns. With one vCPU:
    - every data gfn is mapped at least once (the populate epoch writes all);
    - set_spte = distinct gfns + remapped (a gfn mapped again after a zap);
    - right after populate, pages_4k = system memslot pages + every data page,
      which isolates the system share S (page tables, GDT/TSS, code, stack,
      mailbox: a few pages mapped at build, plus one per vCPU that the first
      epoch touches);
    - the populate's fsync writes back every page, and writeback's mkclean
      zaps each data SPTE (kvm_unmap_hva_range), so right after it pages_4k
      = S, which the report says in words; memcg reclaim zaps evicted pages
      too; from then on only the hot set is touched (a hot set that stays
      put: hotcold). So at the end pages_4k = S + hot pages, and the remapped
      are at least the hot pages (each mapped again after the fsync zap).
"""

from __future__ import annotations

import re
import threading
from collections import Counter

import pytest

from kvmctl import cleanup
from kvmctl.experiment.runner import Experiment
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.report import schema as rm
from kvmctl.probe.tracing import require_tracefs
from kvmctl.trace.records import EventKind
from tests.helpers.tracefs import TraceLine, TracefsInstance

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]

EDGE_NS = 100_000 + 1000  # stamp gap bound + print resolution (as tests/bpf/test_aging_crosscheck.py)
KIND_OF_EVENT = {"kvm_age_hva": EventKind.AGE, "kvm_test_age_hva": EventKind.TEST_AGE,
                 "kvm_unmap_hva_range": EventKind.UNMAP}
_RANGE_RE = re.compile(r"0x([0-9a-f]+) -- 0x([0-9a-f]+)")
_HVA_RE = re.compile(r"0x([0-9a-f]+)\s*$")


def _filters(slots: list[rm.Memslot]) -> dict[str, str]:
    span = " || ".join(f"(start < {m.hva_end} && end > {m.hva_start})" for m in slots)
    one = " || ".join(f"(hva >= {m.hva_start} && hva < {m.hva_end})" for m in slots)
    return {"kvm:kvm_age_hva": span, "kvm:kvm_unmap_hva_range": span, "kvm:kvm_test_age_hva": one}


def _pages(line: TraceLine, slots: list[rm.Memslot]) -> int:
    """Pages of our memslots an event covers, computed like ebpf/aging.c our_pages()."""
    if line.event == "kvm_test_age_hva":
        start = int(_HVA_RE.search(line.text).group(1), 16)
        end = start + 1
    else:
        start, end = (int(x, 16) for x in _RANGE_RE.search(line.text).groups())
    pages = 0
    for m in slots:
        lo, hi = max(start, m.hva_start), min(end, m.hva_end)
        if lo < hi:
            pages += ((hi - m.hva_start + 4095) >> 12) - ((lo - m.hva_start) >> 12)
    return pages


class TracedExperiment(Experiment):
    """An experiment whose aging events a private tracefs instance counts as well."""

    instance: TracefsInstance | None = None

    def start_tracer(self) -> None:
        inst = TracefsInstance(require_tracefs(), _filters(self.report.memslots), buffer_kb=32768)
        inst.__enter__()
        self.instance = inst
        cleanup.register(f"remove tracefs instance {inst.path.name}", lambda: inst.__exit__(None, None, None))
        super().start_tracer()


@pytest.fixture(scope="module")
def traced():
    """One 256 MiB experiment over 2 memslots, with its instance's lines, shared by the checks."""
    spec = ExperimentSpec(mem="256M", memslots=2, passes=2, pattern="hotcold:0.25")
    exp = TracedExperiment(spec, command_line=["pytest", "crosscheck"])
    try:
        exp.run()
        exp.instance.disable()
        lines = exp.instance.lines()
        dropped = exp.instance.dropped
    finally:
        cleanup.run_all()
    assert exp.report.complete, exp.report.incomplete_reason
    assert dropped == 0, f"the tracefs instance dropped {dropped} events: enlarge its buffer"
    return exp, lines


def test_bpf_aging_counts_equal_the_tracefs_instance(traced):
    exp, lines = traced
    report, res = exp.report, exp.trace_result
    slots = report.memslots
    start, end = report.trace_window.start_ns, report.trace_window.end_ns
    certain: Counter = Counter()  # (tid, kind) -> calls
    edge: Counter = Counter()
    pages: Counter = Counter()
    for line in lines:
        key = (line.pid, KIND_OF_EVENT[line.event])
        if start + EDGE_NS <= line.ts_ns < end - EDGE_NS:
            certain[key] += 1
            pages[key] += _pages(line, slots)
        elif start - EDGE_NS <= line.ts_ns < start + EDGE_NS or end - EDGE_NS <= line.ts_ns < end + EDGE_NS:
            edge[key] += 1

    assert all(v == 0 for k, v in res.lost.items() if k.startswith("aging.")), res.lost
    bpf = {(t.pid, EventKind[t.kind.upper()]): t for t in res.aging.by_task}
    for key in set(bpf) | set(certain) | set(edge):
        got = bpf[key].calls if key in bpf else 0
        lo, slack = certain[key], edge[key]
        assert lo <= got <= lo + slack, f"tid {key[0]} {key[1].label}: BPF {got} calls, tracefs {lo} (+{slack})"
        if not slack and key in bpf:
            assert bpf[key].pages == pages[key], f"tid {key[0]} {key[1].label}: pages differ"

    # the report's figures are these same events: age + test_age of every task, background = not ours/VM
    aging = (EventKind.AGE, EventKind.TEST_AGE)
    lo = sum(n for (_, kind), n in certain.items() if kind in aging)
    slack = sum(n for (_, kind), n in edge.items() if kind in aging)
    assert lo <= report.aging.calls <= lo + slack
    assert certain[(threading.get_native_id(), EventKind.AGE)] > 0, "our memcg reclaim made no kvm_age_hva call"
    assert sum(v for (_, k), v in certain.items() if k is EventKind.UNMAP) > 0, "reclaim unmapped nothing"
    assert report.aging.pages == sum(t.pages for t in res.aging.by_task if t.kind in ("age", "test_age"))


def test_per_gfn_mappings_reconcile_with_pages_4k(traced):
    exp, _ = traced
    m, gt, total = exp.report.spte, exp.report.ground_truth, exp.total_pages
    assert m.set_spte is not None, "the experiment recorded no set_spte counts"
    assert m.gfns_mapped == total, f"{total - m.gfns_mapped} data gfns never mapped"
    assert m.set_spte == m.gfns_mapped + m.remapped  # one vCPU: no two first mappings race
    # After the populate's fsync no data page keeps an SPTE: what is left are the system pages. (Read
    # right after the populate instead, background writeback may already have zapped some data pages.)
    system = m.pages_4k_after_writeback
    assert m.pages_4k_at_build <= system <= m.pages_4k_at_build + exp.spec.vcpus, (m, system)
    assert m.pages_4k_after_populate <= system + total, m
    assert m.remapped >= gt.hot_pages  # every hot page mapped again after the fsync zap
    assert m.pages_4k_at_end == system + gt.hot_pages, (
        f"pages_4k {m.pages_4k_at_end} != system {system} + hot {gt.hot_pages}: a zap or mapping unaccounted")
    assert exp.report.vm_stats["pages_4k"] == m.pages_4k_at_end
