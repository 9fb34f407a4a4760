"""The fallback verdict (kvmctl.experiment.fallback.decide) for every kind of host."""

from __future__ import annotations

import pytest

from kvmctl.experiment.fallback import FallbackInputs, decide
from kvmctl.report.schema import Verdict

SHADOW_STATS = {"pages_4k": 16390, "pages_2m": 0, "mmu_cache_miss": 133, "mmu_shadow_zapped": 0,
                "max_mmu_rmap_size": 0, "remote_tlb_flush": 0}


def test_shadow_host_without_function_probes_is_rmap_by_construction():
    res = decide(FallbackInputs("shadow", shadow_pages_created=129, vm_stats=SHADOW_STATS))
    assert res.verdict is Verdict.RMAP_SHADOW
    assert (res.tdp_share, res.rmap_share) == (0.0, 1.0)
    assert "no TDP MMU" in res.evidence[0]  # the reason comes first
    assert "kvmmmu:kvm_mmu_get_page fired 129 times for this VM" in res.evidence
    assert "VM stat pages_4k=16390" in res.evidence
    assert not any("remote_tlb_flush" in e for e in res.evidence)  # only the MMU stats are evidence
    assert "inferred from the MMU mode" in res.rmap_share_reason


def test_shadow_host_with_function_probes_counts_the_paths():
    res = decide(FallbackInputs("shadow", path_calls={"tdp": 0, "rmap": 40}))
    assert res.verdict is Verdict.RMAP_SHADOW
    assert (res.tdp_share, res.rmap_share) == (0.0, 1.0)
    assert res.rmap_share_reason is None
    assert "function probes: 0 aging calls on the TDP path, 40 on the rmap path" in res.evidence


def test_tdp_host_with_tdp_only_calls_is_tdp():
    res = decide(FallbackInputs("tdp", path_calls={"tdp": 250, "rmap": 0}, vm_stats={"pages_2m": 3}))
    assert res.verdict is Verdict.TDP
    assert (res.tdp_share, res.rmap_share) == (1.0, 0.0)
    assert "VM stat pages_2m=3" in res.evidence


def test_tdp_host_with_rmap_calls_has_fallen_back_because_of_a_nested_guest():
    res = decide(FallbackInputs("tdp", path_calls={"tdp": 30, "rmap": 10}))
    assert res.verdict is Verdict.RMAP_NESTED
    assert res.tdp_share == pytest.approx(0.75)
    assert res.rmap_share == pytest.approx(0.25)
    assert any("nested" in e for e in res.evidence)


def test_tdp_host_with_rmap_only_calls_is_nested_too():
    res = decide(FallbackInputs("tdp", path_calls={"rmap": 5}))
    assert res.verdict is Verdict.RMAP_NESTED
    assert res.rmap_share == 1.0


def test_tdp_host_without_function_probes_cannot_give_shares():
    res = decide(FallbackInputs("tdp", path_calls=None, vm_stats={"pages_4k": 10}))
    assert res.verdict is Verdict.TDP
    assert res.tdp_share is None and res.rmap_share is None
    assert "not observable" in res.rmap_share_reason


def test_tdp_host_with_probes_that_saw_no_call_falls_back_to_the_other_evidence():
    # zero calls is no path evidence: same as no probes
    res = decide(FallbackInputs("tdp", path_calls={"tdp": 0, "rmap": 0}))
    assert res.verdict is Verdict.TDP and res.rmap_share is None


def test_tdp_host_with_nested_shadow_pages_but_no_probes_is_nested_without_shares():
    res = decide(FallbackInputs("tdp", nested_shadow_pages=12))
    assert res.verdict is Verdict.RMAP_NESTED
    assert res.rmap_share is None
    assert "12 shadow pages for nested roots" in res.evidence
    assert "not observable" in res.rmap_share_reason


def test_hook_refusals_name_the_nested_guest():
    res = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 834, "refused:nested": 8434,
                                                                  "locked": 8183}))
    assert res.verdict is Verdict.RMAP_NESTED_HOOK_DISABLED
    assert "this VM has run a nested guest" in res.verdict.value
    assert "refused 8434 requests" in res.evidence[0] and "test_clear_young_nested=v1" in res.evidence[0]


def test_fixed_nested_mode_keeps_the_hook_but_walks_rmaps():
    res = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 1341, "lockless+rmap": 242}))
    assert res.verdict is Verdict.RMAP_NESTED
    assert "242 requests walked the TDP MMU without mmu_lock" in res.evidence[0]


def test_hook_without_nesting_leaves_the_verdict_alone():
    res = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 26542}))
    assert res.verdict is Verdict.TDP


def test_notifier_paths_give_the_path_shares_without_function_probes():
    res = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 25728}))
    assert (res.verdict, res.tdp_share, res.rmap_share) == (Verdict.TDP, 1.0, 0.0)
    assert res.evidence[-1].startswith("kvm_age_notifier paths: 25728 aging calls on the TDP path")
    fixed = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 1341, "lockless+rmap": 242}))
    assert fixed.rmap_share == 242 / 1583 and fixed.tdp_share == 1.0
    v1 = decide(FallbackInputs(host_mmu="tdp", notifier_paths={"lockless": 834, "refused:nested": 8434,
                                                                 "locked": 8183}))
    assert v1.rmap_share == 8183 / (834 + 8183)  # after the refusals, the locked ops walk both
