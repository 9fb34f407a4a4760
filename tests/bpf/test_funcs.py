"""kprobes on KVM's aging functions (runs where kprobes exist: the lab kernel).

memcg reclaim of a file-backed guest makes the host age the VM's pages:
every aging call passes kvm_age_gfn (clear_young) or kvm_test_age_gfn
(test_young), which calls the TDP and/or rmap walker. The latency histogram
of each outer function must hold exactly its calls, young results cannot
exceed calls, and every outer call is counted under exactly one path.
"""

from __future__ import annotations

import pytest
from tests.helpers.vm import VmChild

from kvmctl.trace import hist
from kvmctl.trace.catalogue import make_plan
from kvmctl.trace.records import EventKind, FuncRole
from kvmctl.trace.tracer import Tracer

pytestmark = [pytest.mark.bpf, pytest.mark.kvm, pytest.mark.root, pytest.mark.kprobes, pytest.mark.slow]

SIZE = 64 << 20


def test_aging_function_latency_young_and_path(own, offer, ager_tid):
    plan = make_plan(offer, wanted={"aging.calls", "aging.latency", "aging.young", "aging.path"})
    assert {"aging.latency", "aging.young", "aging.path"} <= set(plan.chosen), plan.not_observable
    vm = VmChild(own, SIZE)
    try:
        assert vm.epoch("seq", write=True) > 0
        with Tracer(plan, vm.target({ager_tid})) as tracer:
            vm.spin("hotcold:0.25", write=False)
            vm.cg.reclaim(SIZE // 2)
            vm.stop()
        result = tracer.collect()
    finally:
        vm.close()

    by_role = {f.role: f for f in result.funcs}
    outer = by_role[FuncRole.OUTER_AGE.name.lower()]
    assert outer.calls > 0, "reclaim made no kvm_age_gfn call on the VM"
    assert outer.function == "kvm_age_gfn"
    for f in result.funcs:
        assert hist.hist_total(f.hist) == f.calls, f.function
        assert 0 <= f.nonzero <= f.calls and f.max_ns <= f.total_ns
    assert sum(result.paths["age"].values()) == outer.calls
    if offer.tdp_mmu:
        assert result.paths["age"]["tdp"] + result.paths["age"]["both"] > 0
    # every clear_young notifier call that reached KVM for our range went through kvm_age_gfn
    assert outer.calls <= result.aging.total(EventKind.AGE).calls
    assert result.lost_events == 0, result.lost
