"""The lab self-check (`kvmctl lab` with no command): what this lab kernel offers.

Runs inside the lab and proves each capability by using it, not by reading a
flag: NPT + TDP MMU, a real guest on /dev/kvm, a kprobe and an fentry program
attached to KVM's aging function, MGLRU switched on (and restored), an
aging pass seen by the trace layer, and the nested-guest fallback to rmaps.
A check the kernel cannot support is skipped with its reason, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from kvmctl.errors import UnsupportedError
from kvmctl.lab.aging_checks import nested_fallback, tdp_aging

AGING_FUNC = "kvm_age_gfn"  # in kvm.ko on every kernel since 5.x
NOTIFIER_AGING_FUNC = "__mmu_notifier_clear_flush_young"  # vmlinux: reclaim's way into KVM aging
LRU_GEN_ENABLED = Path("/sys/kernel/mm/lru_gen/enabled")
SMOKE_BYTES = 8 << 20


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float
    skipped: bool = False  # the kernel or kvmctl lacks a piece: detail says which


def _param(module: str, name: str) -> str | None:
    try:
        return (Path("/sys/module") / module / "parameters" / name).read_text().strip()
    except OSError:
        return None


def check_tdp() -> str:
    npt, tdp = _param("kvm_amd", "npt"), _param("kvm", "tdp_mmu")
    if npt != "Y" or tdp != "Y":
        raise RuntimeError(f"kvm_amd npt={npt} tdp_mmu={tdp}")
    return f"kvm_amd npt={npt}, kvm tdp_mmu={tdp}, nested={_param('kvm_amd', 'nested')}"


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
        before = LRU_GEN_ENABLED.read_text().strip()
    except OSError as err:
        raise RuntimeError(f"MGLRU is not built into this kernel ({LRU_GEN_ENABLED}: {err.strerror})") from err
    try:
        LRU_GEN_ENABLED.write_text("y")
        during = LRU_GEN_ENABLED.read_text().strip()
    finally:
        LRU_GEN_ENABLED.write_text(before)
    after = LRU_GEN_ENABLED.read_text().strip()
    if int(during, 16) & 0x7 != 0x7 or after != before:
        raise RuntimeError(f"enabled={during} with 'y', {after} after restoring {before}")
    return f"lru_gen/enabled {before} -> {during} -> restored {after}"


CHECKS: dict[str, Callable[[], str]] = {
    "tdp": check_tdp,
    "guest": check_guest,
    "kprobe": check_kprobe,
    "fentry": check_fentry,
    "mglru": check_mglru,
    "aging": tdp_aging,
    "nested": nested_fallback,
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
    p = argparse.ArgumentParser(prog="kvmctl.lab.check")
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
