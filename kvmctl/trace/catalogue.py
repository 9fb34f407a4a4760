"""The probe catalogue: for each measurement, where it can be observed.

Each measurement lists its candidate attach points in order of preference; a
new attach point (a tracepoint a patch series adds, a kernel function) is
declared here and nowhere else. :func:`kernel_offer` takes what the running
kernel offers from the host probe (tracepoint fields, kernel symbols, BTF,
lockdown, kprobe support, the KVM MMU in use); :func:`make_plan` is pure and
picks, for every measurement, the first candidate the kernel can serve, or
says in one line why none can (klockstat's habit: tell the user what was
chosen and why).

Function probes are kprobe/kretprobe pairs (ebpf/funcs.c). fentry/fexit
would be cheaper but BCC can only name fentry targets in the C source, and
the rmap walker is often a compiler clone (``kvm_rmap_age_gfn_range.isra.0``)
that has no BTF entry; kprobes take the exact kallsyms name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kvmctl.probe import HostCaps, probe_host
from kvmctl.probe.kvm import PagingCaps
from kvmctl.probe.tracing import KALLSYMS, symbol_base, tracefs_missing
from kvmctl.trace.records import FuncRole

MAX_FUNCS = 8  # enter_/leave_ pairs in ebpf/funcs.c


class AttachKind(str, enum.Enum):
    FENTRY = "fentry"
    KPROBE = "kprobe"
    TRACEPOINT = "tracepoint"


@dataclass(frozen=True)
class AttachPoint:
    kind: AttachKind
    targets: tuple[str, ...]  # "kvm:kvm_age_hva" for tracepoints, function names for kprobes
    program: str  # ebpf/<program>
    fields: tuple[tuple[str, ...], ...] = ()  # per target: tracepoint record fields the program reads
    needs_tdp: bool = False  # fires only when the TDP MMU runs

    def __str__(self) -> str:
        return " + ".join(f"{self.kind.value}:{t}" for t in self.targets)


@dataclass(frozen=True)
class Measurement:
    name: str
    description: str
    candidates: tuple[AttachPoint, ...]


def _tp(target: str, program: str, fields: tuple[str, ...], needs_tdp: bool = False) -> AttachPoint:
    return AttachPoint(AttachKind.TRACEPOINT, (target,), program, (fields,), needs_tdp)


def _kp(*functions: str) -> AttachPoint:
    return AttachPoint(AttachKind.KPROBE, functions, "funcs.c")


_AGE_HVA = _tp("kvm:kvm_age_hva", "aging.c", ("start", "end"))
_SET_SPTE = _tp("kvmmmu:kvm_mmu_set_spte", "spte.c", ("gfn", "level"))
_LOCKS = AttachPoint(AttachKind.TRACEPOINT, ("lock:contention_begin", "lock:contention_end"), "locks.c",
                     (("lock_addr", "flags"), ("lock_addr",)))
# kvm:kvm_age_notifier comes with the test_clear_young series (kernels/test-clear-young): one event
# per aging request, at its end, with the op and the path KVM took.
AGE_NOTIFIER = "kvm:kvm_age_notifier"
TCY_BEGIN = "kvm:kvm_test_clear_young"  # the start of a lockless request (same series)
_NOTIFIER = _tp(AGE_NOTIFIER, "notifier.c", ("op", "path", "start", "end", "young"))
_REQUEST_LATENCY = AttachPoint(AttachKind.TRACEPOINT, ("kvm:kvm_age_hva", "kvm:kvm_test_age_hva", TCY_BEGIN,
                                                       AGE_NOTIFIER), "notifier.c", ((), (), (), ("op", "path")))
# Locked aging requests begin with kvm_age_hva / kvm_test_age_hva and end with kvm_age_notifier.
_LOCKS_BEHIND_AGING = AttachPoint(
    AttachKind.TRACEPOINT,
    ("lock:contention_begin", "lock:contention_end", "kvm:kvm_age_hva", "kvm:kvm_test_age_hva", AGE_NOTIFIER),
    "locks.c", (("lock_addr", "flags"), ("lock_addr",), ("start", "end"), ("hva",), ()))

# Logical names of function probes; resolved to kallsyms names by kernel_offer().
FN_AGE = "kvm_age_gfn"
FN_TEST_AGE = "kvm_test_age_gfn"
FN_TDP_AGE = "kvm_tdp_mmu_age_gfn_range"
FN_TDP_TEST_AGE = "kvm_tdp_mmu_test_age_gfn"
FN_RMAP_AGE = "rmap-age"  # kvm_rmap_age_gfn_range (6.13+), kvm_age_rmap, or a marker of the inlined walk
FN_RMAP_TEST_AGE = "rmap-test-age"  # kvm_test_age_rmap (older kernels; 6.13+ shares kvm_rmap_age_gfn_range)
FN_TEST_CLEAR_YOUNG = "test-clear-young"  # Yu Zhao's series: kvm_arch_test_clear_young & co

# Symbols each logical function may have, by kernel generation, best first.
FUNCTION_SYMBOLS: dict[str, tuple[str, ...]] = {
    FN_AGE: ("kvm_age_gfn",),
    FN_TEST_AGE: ("kvm_test_age_gfn",),
    FN_TDP_AGE: ("kvm_tdp_mmu_age_gfn_range",),
    FN_TDP_TEST_AGE: ("kvm_tdp_mmu_test_age_gfn",),
    # Debian's 6.1 inlines kvm_age_rmap into kvm_age_gfn; the inlined walk still calls
    # rmap_walk_init_level, which then marks the rmap path (its latency is only the walk's setup).
    FN_RMAP_AGE: ("kvm_rmap_age_gfn_range", "kvm_age_rmap", "rmap_walk_init_level"),
    FN_RMAP_TEST_AGE: ("kvm_test_age_rmap",),
    FN_TEST_CLEAR_YOUNG: ("kvm_arch_test_clear_young", "kvm_mmu_notifier_test_clear_young",
                          "kvm_test_clear_young"),
}
FUNCTION_ROLES: dict[str, FuncRole] = {
    FN_AGE: FuncRole.OUTER_AGE,
    FN_TEST_AGE: FuncRole.OUTER_TEST,
    FN_TDP_AGE: FuncRole.TDP,
    FN_TDP_TEST_AGE: FuncRole.TDP,
    FN_RMAP_AGE: FuncRole.RMAP,
    FN_RMAP_TEST_AGE: FuncRole.RMAP,
    FN_TEST_CLEAR_YOUNG: FuncRole.OTHER,
}

MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("aging.calls", "mmu-notifier aging calls on the VM's memslots, by task class", (_AGE_HVA,)),
    Measurement("aging.pages", "pages those calls covered", (_AGE_HVA,)),
    Measurement("aging.per_gfn", "aging calls per guest page", (_AGE_HVA,)),
    Measurement("aging.timeseries", "aging calls and pages per interval", (_AGE_HVA,)),
    Measurement("aging.test_calls", "test_young calls (accessed bit read, not cleared)",
                (_tp("kvm:kvm_test_age_hva", "aging.c", ("hva",)),)),
    Measurement("aging.unmaps", "invalidations of the VM's ranges (reclaim evictions, munmap)",
                (_tp("kvm:kvm_unmap_hva_range", "aging.c", ("start", "end")),)),
    Measurement("aging.latency", "latency of each aging function", (_kp(FN_AGE, FN_TEST_AGE),)),
    Measurement("aging.young", "young (accessed) results of aging calls", (_kp(FN_AGE, FN_TEST_AGE),)),
    # Without an rmap walker symbol (inlined), an outer call that missed the TDP walker took the rmap path.
    Measurement("aging.path", "which MMU path (TDP or rmap) each aging call took",
                (_kp(FN_AGE, FN_TDP_AGE, FN_RMAP_AGE), _kp(FN_AGE, FN_TDP_AGE))),
    Measurement("aging.notifier_paths", "how KVM answered each aging request: op and path (lockless, "
                "rmaps under mmu_lock, refused, locked), pages asked, young pages found", (_NOTIFIER,)),
    Measurement("aging.request_latency", "latency of each aging request, start to kvm_age_notifier, by op",
                (_REQUEST_LATENCY,)),
    Measurement("aging.test_clear_young", "the test_clear_young notifier of a patched kernel",
                (_NOTIFIER, _kp(FN_TEST_CLEAR_YOUNG))),
    Measurement("aging.bits_cleared", "accessed bits cleared in SPTEs by aging",
                (_tp("kvmmmu:kvm_tdp_mmu_spte_changed", "spte.c", ("gfn", "old_spte", "new_spte"), True),)),
    Measurement("aging.harvest", "per gfn and pass: aged while mapped, accessed bit cleared (harvest scoring)",
                (AttachPoint(AttachKind.TRACEPOINT, ("kvmmmu:kvm_tdp_mmu_spte_changed", "kvmmmu:kvm_mmu_set_spte",
                                                     "kvm:kvm_age_hva", "kvm:kvm_test_age_hva",
                                                     "kvm:kvm_unmap_hva_range"), "spte.c",
                             (("gfn", "old_spte", "new_spte"), ("gfn",), ("start", "end"), ("hva",),
                              ("start", "end")), True),)),
    Measurement("spte.mappings", "leaf SPTEs installed per guest page (re-faults)", (_SET_SPTE,)),
    Measurement("spte.levels", "page sizes of installed SPTEs", (_SET_SPTE,)),
    Measurement("spte.shadow_pages", "shadow pages created (shadow MMU or nested)",
                (_tp("kvmmmu:kvm_mmu_get_page", "spte.c", ("role", "created")),)),
    Measurement("contention.locks", "kernel lock waits with stacks, perf-lock style", (_LOCKS,)),
    Measurement("contention.mmu_lock", "waits on KVM's mmu_lock by waiter class", (_LOCKS,)),
    Measurement("contention.behind_aging", "vCPU waits on mmu_lock while a locked aging request was in progress",
                (_LOCKS_BEHIND_AGING,)),
)

@dataclass
class KernelOffer:
    """What the running kernel offers for tracing (or what a test pretends it does)."""

    release: str
    tracepoint_fields: dict[str, frozenset[str]]  # "cat:event" -> record fields (from format files)
    symbols: dict[str, str]  # logical function name -> kallsyms name (only those found)
    btf: bool
    lockdown: str | None  # none / integrity / confidentiality; None when unreadable
    kprobes: bool
    kprobes_reason: str  # why not, when kprobes is False
    tdp_mmu: bool
    tdp_reason: str  # e.g. "tdp_mmu=N (kvm_pvm: shadow paging)"
    accessed_mask: int | None  # shadow_accessed_mask of the TDP MMU, None without A/D bits
    notes: list[str] = field(default_factory=list)


@dataclass
class TracePlan:
    chosen: dict[str, str]  # measurement -> attach point, as text
    not_observable: dict[str, str]  # measurement -> one-line reason
    points: dict[str, AttachPoint]  # measurement -> attach point
    functions: dict[str, FuncRole]  # kallsyms name -> role, for funcs.c
    accessed_mask: int | None
    offer: KernelOffer

    def programs(self) -> set[str]:
        return {p.program for p in self.points.values()}

    def uses(self, target: str) -> bool:
        return any(target in p.targets for p in self.points.values())

    def describe(self) -> list[str]:
        lines = [f"{name}: {point}" for name, point in sorted(self.chosen.items())]
        lines += [f"{name}: not observable here: {why}" for name, why in sorted(self.not_observable.items())]
        return lines


def _kprobe_reason(offer: KernelOffer) -> str:
    reason = offer.kprobes_reason
    if offer.lockdown == "confidentiality":  # the lockdown mode that forbids kprobes too
        reason += f" (lockdown={offer.lockdown})"
    return reason


def _describe(point: AttachPoint, offer: KernelOffer) -> str:
    """The attach point with kprobe targets named as the kernel names them (compiler clones included)."""
    if point.kind is AttachKind.KPROBE:
        return " + ".join(f"kprobe:{offer.symbols[t]}" for t in point.targets)
    return str(point)


def _unavailable(point: AttachPoint, offer: KernelOffer) -> str | None:
    """None if the kernel can serve ``point``, else why not."""
    if point.kind is AttachKind.TRACEPOINT:
        for target, needed in zip(point.targets, point.fields, strict=True):
            fields = offer.tracepoint_fields.get(target)
            if fields is None:
                return f"tracepoint {target} does not exist in this kernel"
            missing = [f for f in needed if f not in fields]
            if missing:
                return f"tracepoint {target} lacks field(s) {', '.join(missing)}"
        if point.needs_tdp and not offer.tdp_mmu:
            return f"{point.targets[0]} fires only in the TDP MMU and this host has none ({offer.tdp_reason})"
        return None
    if point.kind is AttachKind.KPROBE:
        if not offer.kprobes:
            return f"kprobes are unavailable: {_kprobe_reason(offer)}"
        missing = [t for t in point.targets if t not in offer.symbols]
        if missing:
            names = " / ".join(n for t in missing for n in FUNCTION_SYMBOLS[t])
            return f"no function {names} in {KALLSYMS}"
        return None
    return "fentry programs are not used by this version of kvmctl"


def make_plan(offer: KernelOffer, wanted: set[str] | None = None) -> TracePlan:
    """Choose an attach point per measurement (all of them unless ``wanted``)."""
    chosen: dict[str, str] = {}
    points: dict[str, AttachPoint] = {}
    not_observable: dict[str, str] = {}
    for m in MEASUREMENTS:
        if wanted is not None and m.name not in wanted:
            continue
        reasons = []
        for point in m.candidates:
            why = _unavailable(point, offer)
            if why is None:
                chosen[m.name] = _describe(point, offer)
                points[m.name] = point
                break
            reasons.append(why)
        else:
            not_observable[m.name] = "; ".join(dict.fromkeys(reasons))
    if "aging.bits_cleared" in not_observable and not offer.tdp_mmu:
        tail = ("kprobes are unavailable" if not offer.kprobes else "kprobes give no per-SPTE view")
        not_observable["aging.bits_cleared"] = (
            f"no TDP MMU on this host ({offer.tdp_reason}): the rmap path has no tracepoint for accessed-bit "
            f"clears and {tail}" + (f" ({_kprobe_reason(offer)})" if not offer.kprobes else ""))
    for name in ("aging.notifier_paths", "contention.behind_aging", "aging.request_latency"):
        if name in not_observable and AGE_NOTIFIER not in offer.tracepoint_fields:
            not_observable[name] = (f"tracepoint {AGE_NOTIFIER} does not exist in this kernel: it comes with the "
                                    "test_clear_young series (kernels/test-clear-young)")
    if "aging.bits_cleared" in points and offer.accessed_mask is None:
        del points["aging.bits_cleared"], chosen["aging.bits_cleared"]
        not_observable["aging.bits_cleared"] = ("the TDP MMU runs without accessed/dirty bits (EPT A/D off): "
                                                "aging write-protects SPTEs for access tracking instead")
    # harvest scoring observes what aging cleared exactly as bits_cleared does
    if "aging.bits_cleared" in not_observable and "aging.harvest" in points:
        del points["aging.harvest"], chosen["aging.harvest"]
    if "aging.bits_cleared" in not_observable and (wanted is None or "aging.harvest" in wanted):
        not_observable["aging.harvest"] = ("the accessed bits aging clears are not observable: "
                                           + not_observable["aging.bits_cleared"])

    functions: dict[str, FuncRole] = {}
    for point in points.values():
        if point.kind is AttachKind.KPROBE:
            for logical in point.targets:
                functions[offer.symbols[logical]] = FUNCTION_ROLES[logical]
    # The path and latency views gain from every walker the kernel has.
    if functions:
        for logical in (FN_TDP_AGE, FN_TDP_TEST_AGE, FN_RMAP_AGE, FN_RMAP_TEST_AGE):
            if logical in offer.symbols and len(functions) < MAX_FUNCS:
                functions.setdefault(offer.symbols[logical], FUNCTION_ROLES[logical])
    return TracePlan(chosen, not_observable, points, functions, offer.accessed_mask, offer)


# The running kernel's offer, from the host probe


def resolve_symbols(names: set[str]) -> dict[str, str]:
    """Logical function -> kallsyms name; compiler clones (.isra.0) count, exact names first."""
    by_base: dict[str, list[str]] = {}
    for name in names:
        base = symbol_base(name)
        if base:
            by_base.setdefault(base, []).append(name)
    out = {}
    for logical, candidates in FUNCTION_SYMBOLS.items():
        for base in candidates:
            found = sorted(by_base.get(base, []), key=lambda n: (n != base, len(n), n))
            if found:
                out[logical] = found[0]
                break
    return out


def detect_mmu(module: str | None, paging: PagingCaps) -> tuple[bool, str, int | None]:
    """(TDP MMU in use, one-line reason, shadow_accessed_mask for TDP SPTEs) from the probe's paging items."""
    if paging.tdp_mmu.value is None:
        return False, "the kvm module is not loaded", None
    if not paging.tdp_mmu:
        extra = "kvm_pvm shadow paging, " if module == "kvm_pvm" else ""
        return False, f"{extra}tdp_mmu=N", None
    if module == "kvm_intel":
        if not paging.ept:
            return False, "kvm_intel ept=N", None
        return True, "kvm_intel ept=Y, tdp_mmu=Y", (1 << 8) if paging.ad_bits else None
    if module == "kvm_amd":
        if not paging.npt:
            return False, "kvm_amd npt=N", None
        return True, "kvm_amd npt=Y, tdp_mmu=Y", 1 << 5  # NPT uses the x86 PTE accessed bit
    return False, f"tdp_mmu=Y but no EPT/NPT vendor module ({module or 'none'})", None


def kernel_offer(caps: HostCaps | None = None) -> KernelOffer:
    """What this kernel offers for tracing, as the host probe saw it; tests build a KernelOffer by hand."""
    caps = caps or probe_host()
    if caps.tracefs is None:
        raise tracefs_missing()
    notes: list[str] = []
    wanted = {t for m in MEASUREMENTS for p in m.candidates if p.kind is AttachKind.TRACEPOINT for t in p.targets}
    fields = {t: f for t in sorted(wanted) if (f := caps.tracepoint_fields(t)) is not None}
    if caps.kernel_symbols.error:
        notes.append(caps.kernel_symbols.error)
    symbols = resolve_symbols(caps.kernel_symbols.matching(n for names in FUNCTION_SYMBOLS.values() for n in names))
    lockdown = caps.bpf.lockdown
    if not lockdown:
        notes.append(f"lockdown mode unknown: {lockdown.reason}")
    tdp, tdp_reason, mask = detect_mmu(caps.kvm.module.value, caps.paging)
    return KernelOffer(
        release=caps.kernel.release,
        tracepoint_fields=fields,
        symbols=symbols,
        btf=bool(caps.bpf.btf),
        lockdown=lockdown.value if lockdown else None,
        kprobes=bool(caps.kprobe_verdict),
        kprobes_reason=caps.kprobe_verdict.reason or "",
        tdp_mmu=tdp,
        tdp_reason=tdp_reason,
        accessed_mask=mask,
        notes=notes,
    )
