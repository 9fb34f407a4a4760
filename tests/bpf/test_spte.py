"""kvmmmu:kvm_mmu_set_spte / kvm_mmu_get_page counts of a real guest.

The guest touches every page of its data memslot once: every gfn must be
mapped at least once, at 4 KiB. Then reclaim evicts part of the file-backed
memory (kvm_unmap_hva_range zaps those SPTEs) and the guest touches
everything again: the gfns mapped twice (re-faults) must be gfns whose hva
was invalidated in between.

The counts are reconciled with the VM's binary stats over the first epoch:
pages_4k grows by one per new leaf SPTE, and may grow by a few more than
set_spte counts because the payload's own pages (mailbox, stack) live in
the system memslot, which the gfn filter leaves out. On the shadow MMU,
every shadow page created is an mmu_cache_miss.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.vm import VmChild

from kvmctl.trace.catalogue import make_plan
from kvmctl.trace.tracer import Tracer

pytestmark = [pytest.mark.bpf, pytest.mark.kvm, pytest.mark.root, pytest.mark.slow]

SIZE = 32 << 20


def test_set_spte_maps_every_touched_gfn_and_counts_refaults(own, offer, ager_tid):
    plan = make_plan(offer, wanted={"spte.mappings", "spte.levels", "spte.shadow_pages", "aging.unmaps",
                                    "aging.per_gfn"})
    assert {"spte.mappings", "spte.levels", "aging.unmaps"} <= set(plan.chosen), plan.not_observable
    vm = VmChild(own, SIZE)
    try:
        stats0 = vm.stats()
        with Tracer(plan, vm.target({ager_tid})) as tracer:
            assert vm.epoch("seq", write=True) > 0
            first = tracer.snapshot()
            stats1 = vm.stats()
            vm.cg.reclaim(SIZE // 2)
            assert vm.epoch("seq", write=True) > 0
        result = tracer.collect()
    finally:
        vm.close()

    pages = SIZE >> 12
    sp = first.spte
    assert (sp.mappings_per_gfn[:pages] > 0).all(), f"{int((sp.mappings_per_gfn == 0).sum())} gfns never mapped"
    assert sp.set_spte == int(sp.mappings_per_gfn.sum())
    assert sp.set_levels == {1: sp.set_spte}, sp.set_levels  # 4 KiB guest pages on 4 KiB host pages
    extra = stats1["pages_4k"] - stats0["pages_4k"] - sp.set_spte
    assert 0 <= extra <= 8, f"pages_4k grew by {sp.set_spte} + {extra}"
    if not offer.tdp_mmu:
        assert sp.shadow_pages_created > 0, "the shadow MMU created no shadow page for our vCPU"
        assert stats1["mmu_cache_miss"] - stats0["mmu_cache_miss"] == sp.shadow_pages_created

    sp = result.spte
    assert sp.set_spte == int(sp.mappings_per_gfn.sum())
    unmapped = result.per_gfn.by_kind["unmap"] > 0
    assert unmapped.any(), "reclaim invalidated none of the VM's pages"
    second_pass = sp.mappings_per_gfn - first.spte.mappings_per_gfn
    refaulted = second_pass > 0
    assert refaulted.any(), "no gfn was mapped again after reclaim"
    assert not (refaulted & ~unmapped).any(), (
        f"{int((refaulted & ~unmapped).sum())} gfns re-mapped without an invalidation of their hva")
    # one vCPU: no two mappings of a gfn race, so every mapping after a gfn's first is a re-fault
    assert sp.refaults == int((sp.mappings_per_gfn.astype(np.int64) - 1).clip(0).sum())
    assert result.lost_events == 0, result.lost
