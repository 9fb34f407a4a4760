"""The resources of one experiment: host facts, its memory cgroup, the VM child and the tracer.

Each host change is registered with :mod:`kvmctl.cleanup` the moment it is
made (the cgroup when created, the VM child when started, the BPF programs
when loaded), so Ctrl-C or an error at any point undoes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from kvmctl import cleanup
from kvmctl.agers import Ager, get_ager
from kvmctl.agers.residency import resident_pages
from kvmctl.cgroup import ExperimentCgroup, own_memcg, stale_cgroups
from kvmctl.errors import UnsupportedError, UsageError
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.experiment.observations import ExperimentTracer
from kvmctl.experiment.vmproc import VmProcess
from kvmctl.experiment.vmproto import Built
from kvmctl.placement import CpuPlacement
from kvmctl.probe import HostCaps, probe_host
from kvmctl.report.schema import Report
from kvmctl.trace.records import TraceResult
from kvmctl.units import parse_duration


def preflight(spec: ExperimentSpec, caps: HostCaps | None = None) -> Ager:
    """The ager, if this host can run what the spec asks for; refuses before anything is changed or written."""
    caps = caps or probe_host()
    if spec.nested:
        nested = caps.paging.nested
        if not nested or "svm" not in str(caps.kvm.hw_virt.value or ""):
            raise UnsupportedError(f"--nested needs an AMD SVM host with nested guests: "
                                   f"{nested.reason or 'the CPU has no svm flag'}",
                                   "run it inside kvmctl lab (emulated SVM+NPT)")
    ager = get_ager(spec.ager)
    ager.availability().require(spec.ager)
    if spec.ager == "memcg":
        _reclaimable(spec, caps)
    return ager


def _reclaimable(spec: ExperimentSpec, caps: HostCaps) -> None:
    """Refuse guest memory memcg reclaim cannot take: every squeeze would fail (EBUSY) and so every pass."""
    if spec.backing.startswith("hugetlb"):
        raise UsageError(f"the memcg ager cannot reclaim {spec.backing} guest memory: the kernel never reclaims "
                         "hugetlb pages", "use --backing file (the default), or --ager passive to watch the host")
    if spec.backing in ("anon", "thp") and not caps.memory.swap:
        raise UnsupportedError(f"the memcg ager cannot reclaim {spec.backing} guest memory here: "
                               f"{caps.memory.swap.reason}",
                               "use --backing file (the default), add swap, or --ager passive to watch the host")


class Session:
    def __init__(self, spec: ExperimentSpec, report: Report, progress: Callable[[str], None]):
        self.spec = spec
        self.report = report
        self.progress = progress
        self.caps: HostCaps | None = None
        self.cgroup: ExperimentCgroup | None = None
        self.vm: VmProcess | None = None
        self.built: Built | None = None
        self.tracer: ExperimentTracer | None = None
        self._vm_handle: cleanup.Handle | None = None

    def probe(self) -> HostCaps:
        self.caps = probe_host()
        return self.caps

    def check_host(self) -> Ager:
        """The ager, if this host can run what the spec asks for."""
        ager = preflight(self.spec, self.caps or self.probe())
        # A kvmctl killed with SIGKILL leaves its (empty) cgroup behind. It is not ours to
        # remove: name it so that whoever ran that kvmctl can.
        self.report.notes.extend(f"stale cgroup {m.rel} of a kvmctl that no longer runs: remove it with rmdir "
                                 f"{m.path}" for m in stale_cgroups(own_memcg()))
        return ager

    def start_vm(self, placement: CpuPlacement) -> Built:
        """The experiment cgroup, the VM child in it, and the VM built there."""
        self.cgroup = ExperimentCgroup.create(f"exp{int(time.time() * 1000) % 10**8}")
        self.vm = VmProcess()
        self._vm_handle = cleanup.register(f"stop VM process {self.vm.pid}", self.vm.close)
        self.cgroup.add_pid(self.vm.pid)
        self.progress("building the VM")
        self.built = self.vm.build(self.spec.machine_spec(), parse_duration(self.spec.epoch_timeout),
                                   self.spec.vm_nice, placement.vm)
        return self.built

    def start_tracer(self) -> ExperimentTracer:
        self.progress("compiling and attaching BPF programs")
        self.tracer = ExperimentTracer(self.caps, self.built.pid, self.built.memslots, {threading.get_native_id()},
                                       int(parse_duration(self.spec.interval) * 1e9))
        return self.tracer

    def aging_totals(self) -> dict | None:
        """The tracer's running aging totals, for per-pass differences."""
        return self.tracer.aging_totals() if self.tracer else None

    def harvest_take(self) -> np.ndarray | None:
        """Per-page harvest flags since the previous take; None where harvest is not traced."""
        return self.tracer.harvest_take() if self.tracer else None

    def finish_trace(self, report: Report, touch_counts: np.ndarray | None) -> TraceResult | None:
        """Close the trace window and fill the report from it; None when nothing was traced."""
        if self.tracer is None:
            return None
        tracer, self.tracer = self.tracer, None
        try:
            if touch_counts is None:
                touch_counts = np.zeros(self.built.total_pages, np.int64)
            return tracer.fill_report(report, touch_counts)
        finally:
            tracer.stop()

    def residency(self) -> np.ndarray | None:
        """Page-cache residency of every data page (mincore on the backing file); None for anonymous memory."""
        parts = []
        for i, m in enumerate(self.built.memslots):
            path = self.vm.backing_fd_path(i)
            if m.backing not in ("file", "memfd") or path is None:
                return None
            parts.append(resident_pages(path, 0, m.size))
        return np.concatenate(parts) if parts else None

    def close(self) -> None:
        """The normal end: stop the VM child, remove the cgroup (error paths leave both to kvmctl.cleanup)."""
        if self._vm_handle is not None:
            handle, self._vm_handle = self._vm_handle, None
            handle.release()
        if self.cgroup is not None:
            self.cgroup.remove()
