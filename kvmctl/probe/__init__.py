"""The host probe: every host fact kvmctl depends on, read once, in one module per area.

:func:`probe_host` returns a :class:`HostCaps` tree. Every leaf is an
:class:`Item`: ``available``, a ``value``, and when missing (or degraded) a
one-line ``reason`` and a ``remedy``, plus the ``source`` it was read from.
``kvmctl info``, the test markers, every ager's availability and the trace
catalogue's kernel offer all derive from it, so "why is this missing" has
one answer everywhere.

    kernel.py   release, build configuration, lockdown
    kvm.py      vendor module, /dev/kvm, KVM capabilities, MMU module parameters
    memory.py   memcg, swap, THP, hugetlb, MGLRU, idle page tracking, DAMON
    tracing.py  tracefs, tracepoints and their fields, kernel symbols, kprobe interfaces
    bpf.py      BPF syscall and attach, BCC, kernel headers, BTF, kprobe/fentry attempts
    caps.py     the tree and its verdicts

The probe only reads, with these exceptions, all but the last leaving the
host as it was: a throwaway VM (closed again); BPF programs that are loaded,
attached and closed at once; securityfs mounted in a private mount namespace
to read the lockdown mode; and tracefs mounted when absent (left mounted: BCC
needs it, and it changes nothing else). Under ``/sys/kernel/mm/damon`` it
reads the state of kdamonds and never writes.
"""

from __future__ import annotations

import functools
import time

from kvmctl.probe.bpf import kprobe_support, probe_bpf
from kvmctl.probe.caps import HostCaps, MmuMode
from kvmctl.probe.item import Item, is_root
from kvmctl.probe.kernel import probe_kernel_info, probe_lockdown
from kvmctl.probe.kvm import probe_kvm, probe_paging
from kvmctl.probe.memory import probe_memory
from kvmctl.probe.tracing import (
    TRACEPOINTS,
    annotate_tracepoints,
    mount_tracefs,
    probe_symbols,
    probe_tracepoints,
    read_kernel_symbols,
    tracefs_dir,
)


@functools.cache
def probe_host(load_bpf: bool = True) -> HostCaps:
    """Probe this host once per process (cached).

    ``load_bpf=False`` skips every BPF load and attach attempt (the items say
    so); useful where only KVM or memory facts matter.
    """
    started = time.monotonic()
    kernel = probe_kernel_info()
    notes = [n for n in (mount_tracefs(),) if n]
    tracefs = tracefs_dir()
    kvm = probe_kvm()
    paging = probe_paging(kvm.module.value, kernel.config, kernel.version)
    memory = probe_memory(kernel.config)
    kernel_symbols = read_kernel_symbols()
    symbols = probe_symbols(kernel_symbols)
    tracepoints = annotate_tracepoints(probe_tracepoints(TRACEPOINTS, tracefs), kvm.module.value,
                                       bool(paging.tdp_mmu))
    lockdown = probe_lockdown(kernel.config)
    kprobes = kprobe_support(kernel.config, tracefs, lockdown)
    bpf = probe_bpf(kernel.release, tracefs, lockdown, kprobes,
                    bool(symbols.get("kvm_age_gfn")), bool(tracepoints.get("kvm:kvm_age_hva")), load_bpf)
    if load_bpf and not is_root():
        notes.append("not root: BPF loads, DAMON and cgroup writes were not tried")
    return HostCaps(kernel, kvm, paging, memory, bpf, symbols, tracepoints, tuple(notes),
                    time.monotonic() - started, tracefs, kernel_symbols, kprobes)


__all__ = ["HostCaps", "Item", "MmuMode", "probe_host"]
