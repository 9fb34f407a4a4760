"""Orchestration of one experiment: VM child, probes, ager passes, scoring.

    populate (seq write + fsync) -> [touch phase + ager pass] x passes
    -> final touch phase (re-faults of the last pass) -> report

Every host change (cgroup, BPF programs, limits) is registered with
:mod:`kvmctl.cleanup` the moment it is made, so Ctrl-C or an error at any
point undoes it; a report cut short is still written, marked incomplete.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from kvmctl import cleanup
from kvmctl.agers import get_ager
from kvmctl.agers.base import AgerContext, PassRecord
from kvmctl.agers.residency import resident_pages
from kvmctl.cgroup import ExperimentCgroup, own_memcg, stale_cgroups
from kvmctl.errors import GuestError, Interrupted, KvmctlError, UnsupportedError
from kvmctl.experiment.fallback import FallbackInputs, decide
from kvmctl.experiment.scoring import refaults, residency_score, young_score
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.experiment.vmproc import VmProcess
from kvmctl.guest.patterns import Pattern, Region, epoch_touched
from kvmctl.kvm.memslot import Memslot
from kvmctl.placement import CpuPlacement, format_cpu_list, pinned, thread_affinities
from kvmctl.report import schema as rm
from kvmctl.report.figures import REQUIRED_FIGURES, get_figure
from kvmctl.units import PAGE_SIZE, parse_duration


@dataclass
class Phase:
    """A stretch of guest epochs and the pages it touched (ground truth)."""

    first_epoch: int
    last_epoch: int
    epochs: int
    touches: int
    guest_seconds: float
    start_ns: int
    end_ns: int
    touched: np.ndarray  # bool per data page
    touch_counts: np.ndarray  # epochs that touched each page


@dataclass
class ExperimentState:
    """What the run has learned so far; becomes the report, also when cut short."""

    report: rm.Report
    last_phase: Phase | None = None
    # Summed over every phase; a phase's own arrays are not kept, so a long run's memory stays flat.
    touch_counts: np.ndarray | None = None
    records: list[PassRecord] = field(default_factory=list)

    def add_phase(self, phase: Phase) -> None:
        counts = phase.touch_counts.astype(np.int64)
        self.touch_counts = counts if self.touch_counts is None else self.touch_counts + counts
        self.last_phase = phase


class Experiment:
    def __init__(self, spec: ExperimentSpec, command_line: list[str] | None = None, progress=None):
        spec.validate()
        self.spec = spec
        self.pattern = Pattern.parse(spec.pattern)
        self.write = spec.access == "write"
        self.progress = progress or (lambda msg: None)
        self.report = rm.Report(command_line=list(command_line or []), spec=spec.to_dict())
        self.state = ExperimentState(self.report)
        self.vm: VmProcess | None = None
        self.tracer = None
        self.regions: list[Region] = []
        self.total_pages = 0
        self.stats_at_build: dict = {}
        self.stats_after_populate: dict = {}
        self.trace_result = None  # TraceResult of the window, for cross-checks
        self._scores: list = []  # ResidencyScore per pass
        self._young: list = []  # YoungScore per pass, for agers with per-page verdicts
        self._paths: dict[str, int] | None = None  # aging calls per path (function probes)
        self._shadow_pages: int | None = None

    # ------------------------------------------------------------------
    def run(self) -> rm.Report:
        """Run to the end; on any exception the partial report is kept in ``self.report``."""
        placement = self.spec.placement()
        with pinned(placement.ager):  # this thread and the tracer's: where the ager's reclaim runs
            return self._run(placement)

    def _run(self, placement: CpuPlacement) -> rm.Report:
        spec, report = self.spec, self.report
        try:
            self._host_facts()
            if spec.nested:
                nested = self.caps.paging.nested
                if not nested or "svm" not in str(self.caps.kvm.hw_virt.value or ""):
                    raise UnsupportedError(f"--nested needs an AMD SVM host with nested guests: "
                                           f"{nested.reason or 'the CPU has no svm flag'}",
                                           "run it inside kvmctl lab (emulated SVM+NPT)")
            ager = get_ager(spec.ager)
            ager.availability().require(spec.ager)
            # A kvmctl killed with SIGKILL leaves its (empty) cgroup behind. It is not ours to
            # remove: name it so that whoever ran that kvmctl can.
            report.notes.extend(f"stale cgroup {m.rel} of a kvmctl that no longer runs: remove it with rmdir {m.path}"
                                for m in stale_cgroups(own_memcg()))
            cgroup = ExperimentCgroup.create(f"exp{int(time.time() * 1000) % 10**8}")
            self.vm = VmProcess()
            vm_handle = cleanup.register(f"stop VM process {self.vm.pid}", self.vm.close)
            cgroup.add_pid(self.vm.pid)
            self.progress("building the VM")
            info = self.vm.build(spec.machine_spec(), None, parse_duration(spec.epoch_timeout), spec.vm_nice,
                                 placement.vm)
            report.notes.append(self._placement_note(placement, info["vcpu_tids"]))
            self._memslots(info)
            self.stats_at_build = self.vm.call("stats")
            if spec.trace:
                self._start_tracer(info)
            else:
                self._not_traced("tracing disabled (--no-trace)")
            if spec.nested:
                self.progress("mapping guest memory from the host (the nested guest runs after pass 0)")
                self.vm.call("host_touch")
                self.vm.call("sync_memory")
            elif spec.populate:
                self.progress("populating guest memory")
                self._phase_between(Pattern.parse("seq"), write=True, epochs=1)
                self.stats_after_populate = self.vm.call("stats")
                self.vm.call("sync_memory")
            ctx = AgerContext(cgroup, self.vm.pid, list(self.report.memslots), options=self._ager_options(cgroup))
            ager.prepare(ctx)
            resident_prev = self._residency()
            evicted_prev: np.ndarray | None = None
            passes_t0 = time.monotonic()
            for p in range(spec.passes):
                eta = ""
                if p:
                    per_pass = (time.monotonic() - passes_t0) / p
                    eta = f", ETA {per_pass * (spec.passes - p + 1):.0f}s"
                self.progress(f"pass {p + 1}/{spec.passes} ({spec.ager}, {spec.mode}), "
                              f"epoch {self.state.last_phase.last_epoch + 1 if self.state.last_phase else 0}{eta}")
                phase, record, before, after = self._pass(ager, p)
                self.state.records.append(record)
                row = self._score_pass(p, record, phase, before, after, evicted_prev)
                report.passes.append(row)
                evicted_prev = None if before is None else before & ~after
                resident_prev = after
            self.progress("final touch phase (re-faults of the last pass)")
            final = self._touch_phase()
            if evicted_prev is not None and report.passes:
                report.passes[-1].refaults = refaults(evicted_prev, final.touched)
            ager.restore()
            del resident_prev
            self._finish_trace()
            report.vm_stats = self.vm.call("stats")
            self._mapping_counts()
            self._ground_truth()
            self._fallback()
            report.complete = True
            vm_handle.release()
            cgroup.remove()
        except GuestError as err:
            report.guest_fault = rm.GuestFault(err.message, getattr(err, "registers", {}))
            report.incomplete_reason = err.one_line()
            raise
        except (KvmctlError, Interrupted) as err:
            report.incomplete_reason = err.one_line()
            raise
        except BaseException as err:
            report.incomplete_reason = f"{type(err).__name__}: {err}"
            raise
        finally:
            self._finish_trace()
            for name in REQUIRED_FIGURES:
                if get_figure(report, name) is None and report.reason_for(name) == "no reason recorded":
                    report.probes.not_observable.setdefault(
                        name, "the run was cut short first" if not report.complete else "not measured")
        return report

    # --- host and VM facts ------------------------------------------------
    def _placement_note(self, placement: CpuPlacement, vcpu_tids: list[int]) -> str:
        """The placement asked for, and the vCPU threads' affinity read back from the kernel."""
        seen = thread_affinities(self.vm.pid)
        vcpus = sorted({format_cpu_list(seen[t]) for t in vcpu_tids if t in seen})
        return f"CPU placement: {placement.describe()}; vCPU threads may run on CPUs {' / '.join(vcpus)} " \
               "(sched_getaffinity of each vCPU thread)"

    def _host_facts(self) -> None:
        from kvmctl.probe import probe_host

        caps = probe_host()
        h = self.report.host
        h.kernel_release = platform.release()
        h.machine = platform.machine()
        h.kvm_module = caps.kvm.module.value if caps.kvm.module else None
        h.mmu = rm.Mmu.TDP if caps.mmu.value == "tdp" else rm.Mmu.SHADOW
        h.tdp_mmu = bool(caps.paging.tdp_mmu)
        lockless = caps.paging.lockless_aging.value
        h.lockless_aging = lockless if isinstance(lockless, bool) else None
        h.cpus = os.cpu_count()
        h.memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.caps = caps

    def _memslots(self, info: dict) -> None:
        self.total_pages = info["total_pages"]
        self.regions = [Region(**r) for r in info["regions"]]
        self.report.memslots.extend(Memslot(**m) for m in info["memslots"])

    def _ager_options(self, cgroup: ExperimentCgroup) -> dict:
        opts = dict(self.spec.ager_options)
        if "squeeze_guest" in opts:  # take this fraction of the guest's size away from the cgroup's usage
            frac = float(opts.pop("squeeze_guest"))
            opts["target_bytes"] = max(PAGE_SIZE, cgroup.usage_bytes() - int(frac * self.total_pages * PAGE_SIZE))
        return opts

    # --- touching ---------------------------------------------------------
    def _phase_from(self, pattern: Pattern, first: int, last: int, summary: dict) -> Phase:
        counts = np.zeros(self.total_pages, dtype=np.int32)
        distinct_epochs = last - first + 1
        if pattern.kind.name == "RANDOM" or pattern.cold_every:
            for e in range(first, last + 1):  # each epoch differs
                counts += epoch_touched(pattern, self.regions, self.total_pages, e, summary.get("seed", 0))
        elif distinct_epochs > 0:
            counts += epoch_touched(pattern, self.regions, self.total_pages, first, 0).astype(np.int32) * \
                distinct_epochs
        return Phase(first, last, distinct_epochs, summary["touches"], summary["guest_seconds"],
                     summary["start_ns"], summary["end_ns"], counts > 0, counts)

    def _phase_between(self, pattern: Pattern, write: bool, epochs: int) -> Phase:
        if epochs == 0:  # a pass before the guest ran at all
            now = time.monotonic_ns()
            phase = Phase(0, -1, 0, 0, 0.0, now, now, np.zeros(self.total_pages, bool),
                          np.zeros(self.total_pages, np.int32))
            self.state.add_phase(phase)
            return phase
        results = [self.vm.epoch(str(pattern), write, self.spec.seed) for _ in range(epochs)]
        for r in results:
            for v in r["vcpus"]:
                self.report.epochs.append(rm.EpochRow(r["epoch"], v["vcpu"], r["pattern"], v["touched"],
                                                      v["guest_seconds"], r["wall_seconds"], r["start_ns"],
                                                      r["end_ns"]))
        summary = {"touches": sum(v["touched"] for r in results for v in r["vcpus"]),
                   "guest_seconds": sum(max(v["guest_seconds"] for v in r["vcpus"]) for r in results),
                   "start_ns": results[0]["start_ns"], "end_ns": results[-1]["end_ns"], "seed": self.spec.seed}
        phase = self._phase_from(pattern, results[0]["epoch"], results[-1]["epoch"], summary)
        self.state.add_phase(phase)
        return phase

    def _loop(self, during) -> tuple[Phase, object]:
        """Guest epochs back to back while ``during()`` runs in this thread."""
        self.vm.loop_start(str(self.pattern), self.write, self.spec.seed)
        try:
            time.sleep(parse_duration(self.spec.settle))
            result = during()
        finally:
            summary = self.vm.loop_stop()
        if not summary["epochs"]:
            raise GuestError("the guest ran no epoch during the pass", "raise --settle or check the payload")
        phase = self._phase_from(self.pattern, summary["first"], summary["last"], summary)
        self.report.epochs.append(rm.EpochRow(summary["first"], -1, f"{summary['pattern']} x{summary['epochs']}",
                                              summary["touches"], summary["guest_seconds"],
                                              (summary["end_ns"] - summary["start_ns"]) / 1e9,
                                              summary["start_ns"], summary["end_ns"]))
        self.state.add_phase(phase)
        return phase, result

    def _touch_phase(self) -> Phase:
        if self.spec.mode == "between":
            return self._phase_between(self.pattern, self.write, self.spec.epochs_per_pass)
        phase, _ = self._loop(lambda: None)
        return phase

    def _pass(self, ager, index: int):
        """One ager pass with residency before and after; returns (phase, record, before, after)."""
        def run_pass():
            before = self._residency()
            snap = self._snapshot()
            record = ager.run_pass(index)
            after = self._residency()
            return record, before, after, snap, self._snapshot()

        if self.spec.mode == "between":
            epochs = 0 if self.spec.nested and index == 0 else self.spec.epochs_per_pass
            phase = self._phase_between(self.pattern, self.write, epochs)
            record, before, after, s0, s1 = run_pass()
        else:
            phase, (record, before, after, s0, s1) = self._loop(run_pass)
        self._pass_aging = (s0, s1)
        return phase, record, before, after

    # --- residency --------------------------------------------------------
    def _residency(self) -> np.ndarray | None:
        """Page-cache residency of every data page (mincore on the backing file)."""
        parts = []
        for i, m in enumerate(self.report.memslots):
            path = self.vm.backing_path(i)
            if m.backing not in ("file", "memfd") or path is None:
                return None
            parts.append(resident_pages(path, 0, m.size))
        return np.concatenate(parts) if parts else None

    # --- tracing ----------------------------------------------------------
    def _start_tracer(self, info: dict) -> None:
        from kvmctl.experiment.tracing import ExperimentTracer

        self.progress("compiling and attaching BPF programs")
        self.tracer = ExperimentTracer(self.caps, info["pid"], self.report.memslots, {threading.get_native_id()},
                                       int(parse_duration(self.spec.interval) * 1e9))
        self.report.probes.chosen.update(self.tracer.chosen)
        self.report.probes.not_observable.update(self.tracer.not_observable)
        self.report.trace_window.start_ns = self.tracer.window_start_ns
        h = self.tracer.headers
        self.report.host.headers = rm.Headers.EXACT if h.exact else rm.Headers.MISMATCHED
        self.report.host.headers_version = h.release
        if h.note():
            self.report.notes.append(h.note())

    def _not_traced(self, reason: str) -> None:
        self.report.host.headers = rm.Headers.NONE
        for figure in ("aging.calls", "aging.pages", "aging.background_calls", "aging.bits_cleared",
                       "contention.mmu_lock_wait_ns", "lost_events", "trace_window.start_ns",
                       "trace_window.end_ns"):
            self.report.probes.not_observable[figure] = reason

    def _snapshot(self):
        return self.tracer.aging_totals() if self.tracer else None

    def _finish_trace(self) -> None:
        if self.tracer is None:
            return
        tracer, self.tracer = self.tracer, None
        try:
            touched = self.state.touch_counts
            if touched is None:
                touched = np.zeros(self.total_pages, np.int64)
            res = tracer.fill_report(self.report, touched)
            self.trace_result = res
            if res.spte is not None:
                self._shadow_pages = res.spte.shadow_pages_created
            if res.paths and sum(res.paths.get("age", {}).values()):
                age = res.paths["age"]
                self._paths = dict(age)
        finally:
            tracer.stop()

    def _mapping_counts(self) -> None:
        spte = self.trace_result.spte if self.trace_result is not None else None
        if spte is None:
            return
        sp = self.report.spte
        sp.set_spte, sp.refaults = spte.set_spte, spte.refaults
        sp.gfns_mapped = int((spte.mappings_per_gfn > 0).sum())
        sp.shadow_pages_created = spte.shadow_pages_created
        sp.pages_4k_at_build = self.stats_at_build.get("pages_4k")
        sp.pages_4k_after_populate = self.stats_after_populate.get("pages_4k")
        sp.pages_4k_at_end = self.report.vm_stats.get("pages_4k")

    # --- scoring ----------------------------------------------------------
    def _score_pass(self, p: int, record: PassRecord, phase: Phase, before, after, evicted_prev) -> rm.PassRow:
        row = rm.PassRow(pass_no=p, ager=record.ager, start_ns=record.start_ns, end_ns=record.end_ns)
        if before is not None and after is not None:
            score = residency_score(before, after, phase.touched)
            row.hot_resident_fraction = score.hot_resident_fraction
            row.cold_resident_fraction = score.cold_resident_fraction
            row.evicted_pages = score.evicted_pages
            self._scores.append(score)
        if evicted_prev is not None:
            row.refaults = refaults(evicted_prev, phase.touched)
        if record.idle is not None:
            ys = young_score(record.idle, record.observed, phase.touched)
            self._young.append(ys)
        s0, s1 = self._pass_aging
        if s0 is not None and s1 is not None:
            row.aging_calls = s1["calls"] - s0["calls"]
            row.aging_pages = s1["pages"] - s0["pages"]
            row.background_calls = s1["background_calls"] - s0["background_calls"]
            if s0.get("paths") is not None and s1.get("paths") is not None:
                row.aging_paths = {k: s1["paths"].get(k, 0) - s0["paths"].get(k, 0) for k in s1["paths"]}
        for note in record.notes + record.errors:
            self.report.notes.append(f"pass {p}: {note}")
        return row

    def _ground_truth(self) -> None:
        gt, report = self.report.ground_truth, self.report
        scores = self._scores
        if scores:
            last = scores[-1]
            gt.hot_pages, gt.cold_pages = last.hot_pages, last.cold_pages
            gt.hot_resident_fraction = last.hot_resident_fraction
            gt.cold_resident_fraction = last.cold_resident_fraction
            evicted = sum(s.evicted_pages for s in scores)
            gt.evicted_pages = evicted
            gt.evicted_cold_fraction = sum(s.evicted_cold for s in scores) / evicted if evicted else None
            if not evicted:
                report.probes.not_observable["ground_truth.evicted_cold_fraction"] = \
                    "no page was evicted by any pass (nothing to score)"
            gt.refaults = sum(r.refaults or 0 for r in report.passes)
            gt.scored_by = f"{self.spec.ager} (page-cache residency via mincore on the backing file)"
        else:
            reason = (f"{self.spec.backing} backing: page-cache residency (mincore) applies only to file and memfd "
                      "backings; anonymous guest memory is never evicted here (no swap)")
            for f in ("ground_truth.hot_resident_fraction", "ground_truth.evicted_cold_fraction",
                      "ground_truth.refaults"):
                report.probes.not_observable[f] = reason
        young = self._young
        if young:
            gt.precision, gt.recall = young[-1].precision, young[-1].recall
        else:
            reason = f"the {self.spec.ager} ager reports no per-page young/idle verdicts"
            report.probes.not_observable.setdefault("ground_truth.precision", reason)
            report.probes.not_observable.setdefault("ground_truth.recall", reason)

    def _fallback(self) -> None:
        r = self.report
        paths, shadow = self._paths, self._shadow_pages
        res = decide(FallbackInputs(host_mmu=r.host.mmu.value if r.host.mmu else "shadow", path_calls=paths,
                                    shadow_pages_created=shadow, vm_stats=r.vm_stats))
        r.fallback.verdict, r.fallback.tdp_share, r.fallback.rmap_share = res.verdict, res.tdp_share, res.rmap_share
        r.fallback.evidence = res.evidence
        if self.spec.nested and r.passes:
            def share(paths: dict[str, int] | None) -> str:
                total = sum((paths or {}).values())
                if not total:
                    return "no aging call seen by the function probes"
                return ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in sorted(paths.items()) if v)

            after: dict[str, int] = {}
            for row in r.passes[1:]:
                for k, v in (row.aging_paths or {}).items():
                    after[k] = after.get(k, 0) + v
            r.fallback.evidence.insert(0, f"before the nested guest ran (pass 0): {share(r.passes[0].aging_paths)}; "
                                          f"after it ran (passes 1..{len(r.passes) - 1}): {share(after)}")
        if res.rmap_share_reason:
            r.notes.append(f"fallback.rmap_share: {res.rmap_share_reason}")
            if res.rmap_share is None:
                r.probes.not_observable["fallback.rmap_share"] = res.rmap_share_reason
