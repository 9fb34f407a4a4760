"""Lab checks that age a real VM's memory and watch KVM do it.

The aging pass is ``madvise(MADV_PAGEOUT)`` on the VM's memslots: reclaim of
exactly those pages, whose ``folio_referenced()`` calls the MMU notifier and
so ``kvm_age_gfn`` for every page, with no cgroup or swap needed. The figures
come from the trace layer (kvmctl.trace: funcs.c kprobes, spte.c tracepoints).

- ``tdp_aging``: a CPL3 guest on the TDP MMU; aging latency histogram,
  accessed bits cleared, every call on the TDP path.
- ``nested_fallback``: the nested_svm payload (CPL0 L1 VMRUNs an L2 with
  nested paging); the share of aging calls per path before and after the L2
  ran, and the fallback verdict, which must be "rmap (nested)".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmctl import libc
from kvmctl.errors import KvmctlError, UnsupportedError
from kvmctl.units import PAGE_SIZE

CHECK_BYTES = 16 << 20
NESTED_PAYLOAD = "nested_svm"
NESTED_RESERVED_PAGES = 512  # guests/nested_svm.S: NSVM_RESERVED, the SVM area at the region's end
PATH_MEASUREMENTS = {"aging.path", "aging.latency", "aging.young"}


def pageout(memslots) -> None:
    """Reclaim the memslots' pages now: one aging call per mapped page."""
    for slot in memslots:
        try:
            libc.madvise(slot.hva_start, slot.size, libc.MADV_PAGEOUT)
        except OSError as err:
            raise KvmctlError(f"madvise(MADV_PAGEOUT) on memslot {slot.slot} failed: {err.strerror}",
                              "MADV_PAGEOUT needs Linux 5.4+") from None


def _plan(wanted: set[str]):
    from kvmctl.trace.catalogue import kernel_offer, make_plan

    plan = make_plan(kernel_offer(), wanted)
    missing = {name: why for name, why in plan.not_observable.items() if name in wanted}
    if missing:
        raise UnsupportedError("; ".join(f"{k}: {v}" for k, v in sorted(missing.items())),
                               "run on a kernel with kprobes and the TDP MMU (kvmctl lab)")
    return plan


def _paths(result) -> dict[str, int]:
    return dict((result.paths or {}).get("age", {}))


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def _share(paths: dict[str, int]) -> str:
    total = sum(paths.values())
    if not total:
        return "no aging calls"
    return ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in paths.items() if v)


def tdp_aging() -> str:
    from kvmctl.guest.machine import GuestMachine, MachineSpec
    from kvmctl.guest.patterns import Pattern
    from kvmctl.trace.records import FuncRole
    from kvmctl.trace.records import TraceTarget
    from kvmctl.trace.tracer import Tracer

    plan = _plan(PATH_MEASUREMENTS | {"aging.bits_cleared"})
    with GuestMachine(MachineSpec(mem_bytes=CHECK_BYTES, vcpus=1)) as m:
        m.run_epoch(Pattern.parse("seq"), write=True)  # maps every page and sets its accessed bit
        with Tracer(plan, TraceTarget(os.getpid(), m.data_memslots)) as tracer:
            pageout(m.data_memslots)
        result = tracer.collect()
    age = [f for f in result.funcs or [] if f.role == FuncRole.OUTER_AGE.name.lower()]
    calls = sum(f.calls for f in age)
    hist_calls = sum(b.count for f in age for b in f.hist)
    cleared = result.spte.bits_cleared if result.spte else None
    paths = _paths(result)
    if not calls or not hist_calls:
        raise RuntimeError(f"no aging calls seen by the kprobes ({calls} calls, {hist_calls} in the histogram)")
    if not cleared:
        raise RuntimeError(f"aging cleared no accessed bits (bits_cleared={cleared})")
    if paths.get("rmap", 0) or paths.get("both", 0):
        raise RuntimeError(f"a VM without a nested guest walked rmaps: {paths}")
    worst = max(f.max_ns for f in age)
    return (f"{calls} aging calls, latency histogram of {hist_calls} samples (max {worst / 1e3:.1f} us), "
            f"{cleared} accessed bits cleared; paths: {_share(paths)}")


@dataclass
class NestedFallback:
    before: dict[str, int]  # aging calls per path label before the L2 ran
    after: dict[str, int]  # and after
    verdict: str
    evidence: list[str]


def nested_fallback_run() -> NestedFallback:
    from kvmctl.experiment.fallback import FallbackInputs, decide
    from kvmctl.guest import payload
    from kvmctl.guest.machine import GuestMachine, MachineSpec
    from kvmctl.guest.patterns import Pattern
    from kvmctl.trace.records import TraceTarget
    from kvmctl.trace.tracer import Tracer

    if NESTED_PAYLOAD not in payload.PAYLOADS:
        raise UnsupportedError(f"the {NESTED_PAYLOAD} payload is not registered in kvmctl.guest.payload",
                               "add it to PAYLOADS and guests/Makefile, then make -C guests")
    plan = _plan(PATH_MEASUREMENTS | {"spte.shadow_pages"})
    with GuestMachine(MachineSpec(mem_bytes=CHECK_BYTES, vcpus=1, payload=NESTED_PAYLOAD, cpl=0)) as m:
        m.start()  # L1 is up with EFER.SVME set; no VMRUN yet: only TDP roots
        for view in m.data_view():
            view[::PAGE_SIZE] = 1  # map every page in the process, so reclaim finds it
        with Tracer(plan, TraceTarget(os.getpid(), m.data_memslots)) as tracer:
            pageout(m.data_memslots)
            before = _paths(tracer.snapshot())
            res = m.run_epoch(Pattern.parse("seq"), write=True)  # L2 runs: KVM builds shadow roots
            pageout(m.data_memslots)
            after = _minus(_paths(tracer.snapshot()), before)
        result = tracer.collect()
        stats = m.vm_stats()
    want = m.total_pages - NESTED_RESERVED_PAGES
    if res.touches != want:
        raise RuntimeError(f"the nested guest touched {res.touches} pages, expected {want}")
    shadow = result.spte.shadow_pages_created if result.spte else None
    rmap_calls = after.get("rmap", 0) + after.get("both", 0)
    fb = decide(FallbackInputs(host_mmu="tdp", path_calls={"tdp": after.get("tdp", 0), "rmap": rmap_calls},
                               shadow_pages_created=shadow, vm_stats=stats))
    return NestedFallback(before, after, fb.verdict.value, fb.evidence)


def nested_fallback() -> str:
    from kvmctl.report.schema import Verdict

    nf = nested_fallback_run()
    if nf.before.get("rmap", 0) or nf.before.get("both", 0) or not nf.before.get("tdp", 0):
        raise RuntimeError(f"before the nested guest ran, aging should take only the TDP path: {nf.before}")
    if nf.verdict != Verdict.RMAP_NESTED.value:
        raise RuntimeError(f"verdict {nf.verdict!r} after the nested guest ran (paths {nf.after})")
    return f"before L2: {_share(nf.before)}; after L2: {_share(nf.after)}; verdict {nf.verdict!r}"
