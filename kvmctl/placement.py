"""CPU placement: the VM's vCPUs on some CPUs, kvmctl's ager on others.

Reclaim runs in the context of the task that asks for it: the memcg ager
writing a limit, the MGLRU ager writing lru_gen. When that task and a vCPU
share a CPU, the vCPU stops touching its hot set while reclaim looks at it
twice, and reclaim takes hot pages the guest is using. Measured on a 2-CPU
host with a 256 MiB file-backed guest squeezed to half: unpinned, 3 of 12
squeezes lost 4096-6464 of the 16384 hot pages (they refaulted); with the
VM on CPU 1 and the ager on CPU 0, 0 of 30 did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kvmctl.errors import UsageError

AUTO = "auto"  # the first CPU this process may use for the ager, the rest for the VM, if each vCPU keeps one
ALL = "all"  # no pinning: the scheduler places the task


def parse_cpu_list(text: str, what: str = "CPU list") -> frozenset[int]:
    """'0', '1-3,6' (the kernel's cpulist format) -> CPU numbers."""
    cpus: set[int] = set()
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise UsageError(f"{what} {text!r} is not a CPU list", "write it like 0, 1-3 or 0,2-3") from None
        if first < 0 or last < first:
            raise UsageError(f"{what} {text!r} has an empty or negative range {part.strip()!r}",
                             "write ranges low to high, like 1-3")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """CPU numbers -> the kernel's cpulist format ('0,2-3')."""
    out, run = [], []
    for cpu in sorted(cpus):
        if run and cpu != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(cpu)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclass(frozen=True)
class CpuPlacement:
    """CPUs of the VM process and of kvmctl's own process; None: not pinned."""

    vm: frozenset[int] | None
    ager: frozenset[int] | None
    why: str = ""  # why auto pinned nothing, if it did not

    def describe(self) -> str:
        def side(cpus):
            return f"CPUs {format_cpu_list(cpus)}" if cpus is not None else "unpinned"
        text = f"VM process on {side(self.vm)}, kvmctl (ager, tracer) on {side(self.ager)}"
        return text + (f" ({self.why})" if self.why else "")


def _side(text: str, allowed: frozenset[int], flag: str) -> frozenset[int] | str:
    if text in (AUTO, ALL):
        return text
    cpus = parse_cpu_list(text, flag)
    if not cpus <= allowed:
        raise UsageError(f"{flag} {text} names CPUs {format_cpu_list(cpus - allowed)} this process may not use",
                         f"choose among CPUs {format_cpu_list(allowed)}, or use {flag} {AUTO}")
    return cpus


def resolve_placement(vm_cpus: str, ager_cpus: str, vcpus: int = 1,
                      allowed: frozenset[int] | None = None) -> CpuPlacement:
    """Turn the two settings into CPU sets; ``allowed`` defaults to this process's affinity."""
    allowed = frozenset(os.sched_getaffinity(0)) if allowed is None else allowed
    vm = _side(vm_cpus, allowed, "--vm-cpus")
    ager = _side(ager_cpus, allowed, "--ager-cpus")
    if vm == AUTO and ager == AUTO:
        if len(allowed) <= vcpus:  # splitting would stack vCPUs on each other: a different experiment
            return CpuPlacement(None, None, f"{vcpus} vCPU(s) and {len(allowed)} CPU(s): no CPU is left for the "
                                            "ager without stacking vCPUs; pin with --vm-cpus/--ager-cpus to split anyway")
        first = min(allowed)
        return CpuPlacement(allowed - {first}, frozenset({first}))
    if vm == AUTO:  # the VM gets what the ager leaves, if anything
        rest = allowed - ager if isinstance(ager, frozenset) else frozenset()
        vm = rest or ALL
    if ager == AUTO:
        rest = allowed - vm if isinstance(vm, frozenset) else frozenset()
        ager = rest or ALL
    return CpuPlacement(None if vm == ALL else vm, None if ager == ALL else ager)


@contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread (and threads it starts) on ``cpus``; its old affinity afterwards."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def thread_affinities(pid: int) -> dict[int, frozenset[int]]:
    """Every thread of ``pid`` -> the CPUs it may run on (for cross-checks)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = frozenset(os.sched_getaffinity(int(tid)))
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return out
