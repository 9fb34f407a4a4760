"""The fallback verdict: did this VM's aging take the TDP path or the rmap path?

Evidence, strongest first: the path KVM named for each aging request
(kvm:kvm_age_notifier, kernels with the test_clear_young series), which
aging function ran (function probes), the shadow pages KVM created for the
VM (kvmmmu:kvm_mmu_get_page), the VM's binary stats and the host's MMU mode. On a host without a TDP MMU every
aging call takes the rmap path by construction; the verdict says so and
names the observations that confirm the VM ran on shadow pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from kvmctl.report.schema import Verdict


@dataclass
class FallbackInputs:
    host_mmu: str  # "tdp" or "shadow"
    # aging calls seen by function probes, by the walkers they ran: "tdp", "rmap", "both", "none"
    path_calls: dict[str, int] | None = None
    shadow_pages_created: int | None = None  # kvm_mmu_get_page events for this VM
    vm_stats: dict = field(default_factory=dict)
    nested_shadow_pages: int | None = None  # shadow pages for a nested guest's roots (lab)
    notifier_paths: dict[str, int] | None = None  # aging requests per kvm_age_notifier path label
    paths_source: str = "function probes"  # what path_calls come from


@dataclass
class FallbackResult:
    verdict: Verdict
    tdp_share: float | None
    rmap_share: float | None
    evidence: list[str]
    rmap_share_reason: str | None = None


def walks_from_paths(notifier: dict[str, int], nested: bool) -> dict[str, int]:
    """Aging requests by the walkers they ran, from kvm_age_notifier paths.

    lockless: the TDP MMU only; lockless+rmap: both; refused: retried by a
    locked op, which is counted itself; locked: the TDP MMU, and the rmaps
    too once the VM has shadow roots (``nested``).
    """
    out = {"tdp": notifier.get("lockless", 0), "both": notifier.get("lockless+rmap", 0)}
    out["both" if nested else "tdp"] += notifier.get("locked", 0)
    return out


def decide(inp: FallbackInputs) -> FallbackResult:
    notifier = inp.notifier_paths or {}
    if notifier and not sum((inp.path_calls or {}).values()) and inp.host_mmu == "tdp":
        nested = bool(notifier.get("refused:nested") or notifier.get("lockless+rmap"))
        walks = walks_from_paths(notifier, nested)
        if sum(walks.values()):
            inp = replace(inp, path_calls=walks, paths_source="kvm_age_notifier paths")
    result = _decide(inp)
    refused, both = notifier.get("refused:nested", 0), notifier.get("lockless+rmap", 0)
    if refused:
        result.verdict = Verdict.RMAP_NESTED_HOOK_DISABLED
        result.evidence.insert(0, f"kvm_age_notifier: test_clear_young refused {refused} requests because the VM has "
                                  "shadow roots (kvm.test_clear_young_nested=v1), each retried under mmu_lock")
    elif both:
        result.verdict = Verdict.RMAP_NESTED
        result.evidence.insert(0, f"kvm_age_notifier: {both} requests walked the TDP MMU without mmu_lock and the "
                                  "shadow-MMU rmaps under it (kvm.test_clear_young_nested=fixed)")
    return result


def _decide(inp: FallbackInputs) -> FallbackResult:
    ev: list[str] = []
    stats = inp.vm_stats
    for key in ("pages_4k", "pages_2m", "mmu_cache_miss", "mmu_shadow_zapped", "max_mmu_rmap_size"):
        if key in stats:
            ev.append(f"VM stat {key}={stats[key]}")
    if inp.shadow_pages_created is not None:
        ev.append(f"kvmmmu:kvm_mmu_get_page fired {inp.shadow_pages_created} times for this VM")
    paths = inp.path_calls or {}
    total = sum(paths.values())  # every aging call once, whichever walkers it ran
    if total:
        both = paths.get("both", 0)
        tdp, rmap = paths.get("tdp", 0) + both, paths.get("rmap", 0) + both
        ev.append(f"{inp.paths_source}: {tdp} aging calls on the TDP path, {rmap} on the rmap path"
                  + (f" ({both} of {total} calls walked both)" if both else ""))
        tdp_share, rmap_share = tdp / total, rmap / total
        if rmap and inp.host_mmu == "tdp":
            verdict = Verdict.RMAP_NESTED
            ev.append("the TDP MMU is on, yet aging walked rmaps: shadow roots exist (a nested guest ran)")
        elif inp.host_mmu == "shadow" or (rmap and not tdp):
            verdict = Verdict.RMAP_SHADOW
        else:
            verdict = Verdict.TDP
        return FallbackResult(verdict, tdp_share, rmap_share, ev)
    if inp.host_mmu == "shadow":
        ev.insert(0, "host has no TDP MMU (tdp_mmu=N / no EPT or NPT): kvm_tdp_mmu_age_gfn_range never runs and "
                     "every aging call walks the rmaps")
        return FallbackResult(Verdict.RMAP_SHADOW, 0.0, 1.0, ev,
                              "inferred from the MMU mode (no function probes here); the shadow-page evidence "
                              "confirms the VM ran on the shadow MMU")
    if inp.nested_shadow_pages:
        ev.append(f"{inp.nested_shadow_pages} shadow pages for nested roots")
        return FallbackResult(Verdict.RMAP_NESTED, None, None, ev, "no function probes: per-call path not observable")
    return FallbackResult(Verdict.TDP, None, None, ev,
                          "no function probes: the share of calls per path is not observable on this host")
