"""The lab self-check (`kvmctl lab` with no command): what this lab kernel offers.

Runs inside the lab and proves each capability by using it, not by reading a
flag: NPT + TDP MMU, a real guest on /dev/kvm, a kprobe and an fentry program
attached to KVM's aging function, MGLRU switched on (and restored), an
aging pass seen by the trace layer, and the nested-guest fallback to rmaps.
A check the kernel cannot support is skipped with its reason, not failed.

The aging checks reclaim the VM's memslots with ``madvise(MADV_PAGEOUT)``:
exactly those pages, whose ``folio_referenced()`` calls the MMU notifier and
so ``kvm_age_gfn`` for every page, with no cgroup or swap needed. The figures
come from the trace layer (funcs.c kprobes, spte.c tracepoints).

- ``aging``: a CPL3 guest on the TDP MMU; aging latency histogram, accessed
  bits cleared, every call on the TDP path.
- ``nested``: the nested_svm payload (CPL0 L1 VMRUNs an L2 with nested
  paging); the share of aging calls per path before and after the L2 ran, and
  the fallback verdict, which must be "rmap (nested)".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from kvmctl import libc
from kvmctl.errors import KvmctlError, UnsupportedError
from kvmctl.knobs import read_knob, write_knob
from kvmctl.probe.kernel import probe_kernel_info
from kvmctl.probe.kvm import kvm_module, probe_paging
from kvmctl.probe.memory import LRU_GEN_ENABLED, parse_lru_gen_features
from kvmctl.units import PAGE_SIZE

AGING_FUNC = "kvm_age_gfn"  # in kvm.ko on every kernel since 5.x
NOTIFIER_AGING_FUNC = "__mmu_notifier_clear_flush_young"  # vmlinux: reclaim's way into KVM aging
SMOKE_BYTES = 8 << 20


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float
    skipped: bool = False  # the kernel or kvmctl lacks a piece: detail says which


def check_tdp() -> str:
    kernel = probe_kernel_info()
    paging = probe_paging(kvm_module(), kernel.config, kernel.version)
    npt, tdp, nested = ("Y" if item else "N" for item in (paging.npt, paging.tdp_mmu, paging.nested))
    if not paging.npt or not paging.tdp_mmu:
        raise RuntimeError(f"kvm_amd npt={npt} tdp_mmu={tdp}")
    return f"kvm_amd npt={npt}, kvm tdp_mmu={tdp}, nested={nested}"


def check_guest() -> str:
    from kvmctl.guest.machine import GuestMachine, MachineSpec
    from kvmctl.guest.patterns import Pattern

    pattern = Pattern.parse("seq")
    with GuestMachine(MachineSpec(mem_bytes=SMOKE_BYTES, vcpus=1)) as m:
        res = m.run_epoch(pattern, write=True)
        want = int(m.ground_truth(pattern, res.epoch).sum())
        stats = m.vm_stats()
    if res.touches != want:
        raise RuntimeError(f"guest touched {res.touches} pages, ground truth says {want}")
    mapped = {k: stats[k] for k in ("pages_4k", "pages_2m", "pages_1g") if k in stats}
    return f"CPL3 touch of {want} pages in {res.wall_seconds * 1e3:.0f} ms; VM stats {mapped}"


def _bpf(text: str):
    from bcc import BPF  # Debian's python3-bpfcc

    return BPF(text=text)


def check_kprobe() -> str:
    b = _bpf("int on_age(void *ctx) { return 0; }")
    try:
        b.attach_kprobe(event=AGING_FUNC, fn_name="on_age")
        b.attach_kretprobe(event=AGING_FUNC, fn_name="on_age")
        n = b.num_open_kprobes()
    finally:
        b.cleanup()
    return f"kprobe + kretprobe on {AGING_FUNC} attached ({n} open) and detached"


def _kfunc_attached(func: str) -> int:
    b = _bpf(f"KFUNC_PROBE({func}) {{ return 0; }}\nKRETFUNC_PROBE({func}) {{ return 0; }}")
    try:
        return len(b.kfunc_entry_fds) + len(b.kfunc_exit_fds)
    finally:
        b.cleanup()


def check_fentry() -> str:
    from bcc import BPF

    if not BPF.support_kfunc():
        raise RuntimeError("BCC reports no kfunc (fentry) support on this kernel")
    n = _kfunc_attached(NOTIFIER_AGING_FUNC)
    if n != 2:
        raise RuntimeError(f"{n} of 2 fentry/fexit programs on {NOTIFIER_AGING_FUNC} attached")
    # BCC 0.26 looks fentry targets up in vmlinux BTF only; kvm.ko's functions
    # need kprobes (or a libbpf with module BTF). Say which, do not fail on it.
    try:
        module = f"{AGING_FUNC} too" if _kfunc_attached(AGING_FUNC) == 2 else f"not {AGING_FUNC}"
    except Exception:
        module = f"not {AGING_FUNC} in kvm.ko (this BCC resolves vmlinux BTF only: use kprobes there)"
    return f"fentry + fexit on {NOTIFIER_AGING_FUNC} attached and detached; {module}"


def check_mglru() -> str:
    try:
        before = (read_knob(LRU_GEN_ENABLED) or "").strip()
    except KvmctlError as err:
        raise RuntimeError(f"MGLRU is not built into this kernel ({err.message})") from err
    try:
        write_knob(LRU_GEN_ENABLED, "y")
        during = (read_knob(LRU_GEN_ENABLED) or "").strip()
    finally:
        write_knob(LRU_GEN_ENABLED, before)
    after = (read_knob(LRU_GEN_ENABLED) or "").strip()
    if parse_lru_gen_features(during) & 0x7 != 0x7 or after != before:
        raise RuntimeError(f"enabled={during} with 'y', {after} after restoring {before}")
    return f"{LRU_GEN_ENABLED}: {before} -> {during} -> restored {after}"


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

    from kvmctl.probe import probe_host

    # The files' kprobe verdict: BCC's attach attempts take minutes under emulation, and the checks attach anyway.
    plan = make_plan(kernel_offer(probe_host(load_bpf=False)), wanted)
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


def check_aging() -> str:
    from kvmctl.guest.machine import GuestMachine, MachineSpec
    from kvmctl.guest.patterns import Pattern
    from kvmctl.trace.records import FuncRole, TraceTarget
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


def check_nested() -> str:
    from kvmctl.report.schema import Verdict

    nf = nested_fallback_run()
    if nf.before.get("rmap", 0) or nf.before.get("both", 0) or not nf.before.get("tdp", 0):
        raise RuntimeError(f"before the nested guest ran, aging should take only the TDP path: {nf.before}")
    if nf.verdict != Verdict.RMAP_NESTED.value:
        raise RuntimeError(f"verdict {nf.verdict!r} after the nested guest ran (paths {nf.after})")
    return f"before L2: {_share(nf.before)}; after L2: {_share(nf.after)}; verdict {nf.verdict!r}"


CHECKS: dict[str, Callable[[], str]] = {
    "tdp": check_tdp,
    "guest": check_guest,
    "kprobe": check_kprobe,
    "fentry": check_fentry,
    "mglru": check_mglru,
    "aging": check_aging,
    "nested": check_nested,
}


def run_checks(names: list[str]) -> list[CheckResult]:
    results = []
    for name in names:
        t0 = time.monotonic()
        skipped = False
        try:
            ok, detail = True, CHECKS[name]()
        except UnsupportedError as err:
            ok, skipped, detail = False, True, err.one_line()
        except Exception as err:  # a check's failure is its result, reported in one line
            ok, detail = False, f"{type(err).__name__}: {' '.join(str(err).split())}"
        results.append(CheckResult(name, ok, detail, time.monotonic() - t0, skipped))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvmctl.lab.selfcheck", allow_abbrev=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, help="also write the JSON results to this file")
    p.add_argument("checks", nargs="*", metavar="CHECK", help=f"any of {', '.join(CHECKS)} (default: all)")
    args = p.parse_args(argv)
    unknown = set(args.checks) - set(CHECKS)
    if unknown:
        p.error(f"unknown check(s) {', '.join(sorted(unknown))}; choose from {', '.join(CHECKS)}")
    results = run_checks(args.checks or list(CHECKS))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    if args.json:
        json.dump([asdict(r) for r in results], sys.stdout, indent=1)
        print()
    else:
        for r in results:
            status = "ok  " if r.ok else "skip" if r.skipped else "FAIL"
            print(f"{status} {r.name:<7} {r.seconds:6.1f} s  {r.detail}")
    return 0 if all(r.ok or r.skipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
