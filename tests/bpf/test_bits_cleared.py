"""Accessed-bit clears through kvmmmu:kvm_tdp_mmu_spte_changed (TDP MMU hosts: the lab).

A guest touches its memory, then memcg reclaim ages it: on the TDP MMU each
kvm_age_gfn clears the accessed bit of young SPTEs, one spte_changed event
each. bits_cleared must be positive, no more than the SPTE changes seen, and
the per-gfn array must add up to it.
"""

from __future__ import annotations

import pytest
from tests.helpers.vm import VmChild

from kvmctl.trace.catalogue import make_plan
from kvmctl.trace.tracer import Tracer

pytestmark = [pytest.mark.bpf, pytest.mark.kvm, pytest.mark.root, pytest.mark.tdp, pytest.mark.slow]

SIZE = 64 << 20
HOT = 0.25


def test_bits_cleared_after_an_aging_pass(own, offer, ager_tid):
    plan = make_plan(offer, wanted={"aging.bits_cleared", "spte.mappings"})
    assert "aging.bits_cleared" in plan.chosen, plan.not_observable
    vm = VmChild(own, SIZE)
    try:
        assert vm.epoch("seq", write=True) > 0
        with Tracer(plan, vm.target({ager_tid})) as tracer:
            assert vm.epoch(f"hotcold:{HOT}", write=False) > 0
            vm.cg.reclaim(SIZE // 4)
        result = tracer.collect()
    finally:
        vm.close()

    sp = result.spte
    assert sp.bits_cleared > 0, "aging cleared no accessed bit in the VM's SPTEs"
    assert sp.bits_cleared <= sp.spte_changed
    assert int(sp.cleared_per_gfn.sum()) == sp.bits_cleared
    assert result.lost_events == 0, result.lost
