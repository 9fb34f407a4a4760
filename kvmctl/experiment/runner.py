"""One experiment, end to end: the session's resources, the pass loop, and the report they fill.

    host check -> cgroup + VM child -> tracer -> populate (seq write + fsync)
    -> [touch phase + ager pass] x passes -> final touch phase (re-faults of
    the last pass) -> trace, scores, ground truth, fallback verdict -> report

Every host change is registered with :mod:`kvmctl.cleanup` the moment it is
made, so Ctrl-C or an error at any point undoes it; a report cut short is
still written, marked incomplete.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from kvmctl.agers import Ager, AgerContext
from kvmctl.errors import GuestError, Interrupted, KvmctlError
from kvmctl.experiment import assembly
from kvmctl.experiment.passes import PassLoop
from kvmctl.agers.base import page_gfns
from kvmctl.experiment.scoring import HarvestScore, ResidencyScore, ShiftScore, ShiftTracker, YoungScore, hot_refaults
from kvmctl.experiment.session import Session
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.placement import CpuPlacement, pinned
from kvmctl.report.schema import GuestFault, PassResult, Report
from kvmctl.trace.records import TraceResult
from kvmctl.units import PAGE_SIZE


class Experiment:
    def __init__(self, spec: ExperimentSpec, command_line: list[str] | None = None,
                 progress: Callable[[str], None] | None = None):
        spec.validate()
        self.spec = spec
        self.progress = progress or (lambda msg: None)
        self.report = Report(command_line=list(command_line or []), spec=spec.to_dict())
        self.session = Session(spec, self.report, self.progress)
        self.passes: PassLoop | None = None
        self.trace_result: TraceResult | None = None  # the trace window's records, for cross-checks
        self.stats_at_build: dict = {}
        self.stats_after_populate: dict = {}
        self.stats_after_writeback: dict = {}
        self._scores: list[ResidencyScore] = []  # per pass, where residency is observable
        self._young: list[YoungScore] = []  # per pass, for agers with per-page verdicts
        self._harvest: list[HarvestScore] = []  # per pass, where the harvest is traced
        self._kvm_aging_source: str | None = None  # how the passes' KVM aging time was measured

    @property
    def started(self) -> bool:
        """Whether the VM ran: from then on a run has figures worth a (partial) report. A guest that
        faulted while the VM was built ran too: its registers are the report's figures."""
        return self.session.built is not None or self.report.guest_fault is not None

    @property
    def total_pages(self) -> int:
        return self.session.built.total_pages if self.session.built else 0

    def run(self) -> Report:
        """Run to the end; on any exception the partial report is kept in ``self.report``."""
        placement = self.spec.placement()
        with pinned(placement.ager):  # this thread and the tracer's: where the ager's reclaim runs
            try:
                self._run(placement)
            except GuestError as err:
                self.report.guest_fault = GuestFault(err.message, getattr(err, "registers", {}))
                self.report.incomplete_reason = err.one_line()
                raise
            except (KvmctlError, Interrupted) as err:
                self.report.incomplete_reason = err.one_line()
                raise
            except BaseException as err:
                self.report.incomplete_reason = f"{type(err).__name__}: {err}"
                raise
            finally:
                self._finish_trace()
                assembly.explain_nulls(self.report)
        return self.report

    def _run(self, placement: CpuPlacement) -> None:
        spec, report, session = self.spec, self.report, self.session
        assembly.host_facts(report, session.probe())
        ager = session.check_host()
        built = session.start_vm(placement)
        report.notes.append(assembly.placement_note(placement, built.pid, built.vcpu_tids))
        report.memslots.extend(built.memslots)
        self.stats_at_build = session.vm.stats()
        self.passes = PassLoop(session, spec, report.epochs)
        if spec.trace:
            self.start_tracer()
        else:
            assembly.not_traced(report, "tracing disabled (--no-trace)")
        self._populate()
        options = spec.ager_options_for(session.cgroup.usage_bytes(), built.total_pages * PAGE_SIZE)
        ager.prepare(AgerContext(session.cgroup, built.pid, list(built.memslots), options=options,
                                 caps=session.probe()))
        shifts = self._ager_passes(ager)
        self.progress("final touch phase (re-faults of what the last pass evicted)")
        at_start = self.passes.resident_last
        final = self.passes.touch_phase()
        final_refaults = hot_refaults(at_start, final.touched) if at_start is not None else None
        ager.restore()
        self._finish_trace()
        assembly.ager_settings(report, ager.settings)
        report.vm_stats = session.vm.stats()
        spte = self.trace_result.spte if self.trace_result is not None else None
        assembly.mapping_counts(report, spte, self.stats_at_build, self.stats_after_populate,
                                self.stats_after_writeback)
        assembly.ground_truth(report, spec, self._scores, self._young, shifts, final_refaults)
        if self._harvest:
            assembly.harvest_summary(report, self.passes.harvest, self._harvest, page_gfns(list(built.memslots)))
            if spec.mode == "concurrent":
                report.notes.append("aging.harvest: the guest touched pages during the passes (--mode concurrent), "
                                    "so a touch after a gfn was aged counts as before it; --mode between scores "
                                    "exactly")
        assembly.pass_cost(report, built.total_pages, self._kvm_aging_source)
        assembly.fallback(report, spec, self._paths(), spte.shadow_pages_created if spte else None)
        session.close()
        failed = [p for p in report.passes if p.result is PassResult.FAILED]
        if failed:  # every figure is kept, but a pass that failed a step did not do what it was asked
            raise KvmctlError(f"pass {failed[0].pass_no} of the {spec.ager} ager failed: {failed[0].result_reason}"
                              + (f" (and {len(failed) - 1} more passes)" if len(failed) > 1 else ""),
                              "the report is written, marked incomplete; see its pass table")
        report.complete = True

    def start_tracer(self) -> None:
        assembly.tracer_started(self.report, self.session.start_tracer())

    def _populate(self) -> None:
        """Every data page resident and clean before the first pass (the nested payload maps them from the host)."""
        vm = self.session.vm
        if self.spec.nested:
            self.progress("mapping guest memory from the host (the nested guest runs after pass 0)")
            vm.host_touch()
            vm.sync_memory()
        elif self.spec.populate:
            self.progress("populating guest memory")
            self.passes.between(Pattern.parse("seq"), write=True, epochs=1)
            self.stats_after_populate = vm.stats()
            vm.sync_memory()
            self.stats_after_writeback = vm.stats()
        self.passes.note_residency()

    def _ager_passes(self, ager: Ager) -> list[ShiftScore]:
        """Every pass, scored into the report; the moves of the hot set (where residency is observable)."""
        spec, passes = self.spec, self.passes
        prev_hot: np.ndarray | None = None
        shifts = ShiftTracker()
        t0 = time.monotonic()
        for p in range(spec.passes):
            eta = f", ETA {(time.monotonic() - t0) / p * (spec.passes - p + 1):.0f}s" if p else ""
            self.progress(f"pass {p + 1}/{spec.passes} ({spec.ager}, {spec.mode}), epoch {passes.next_epoch}{eta}")
            outcome = passes.run_pass(ager, p)
            row, score, young, harvest = assembly.pass_row(p, outcome, prev_hot, self.report, self.session.tracer,
                                                           passes.harvest)
            self.report.passes.append(row)
            self._scores += [score] if score else []
            self._young += [young] if young else []
            self._harvest += [harvest] if harvest else []
            self._kvm_aging_source = (outcome.aging_after or {}).get("kvm_aging_source")
            if outcome.resident_after is not None:
                shifts.observe(p, outcome.phase.touched, outcome.resident_after)
            prev_hot = outcome.phase.touched
        return shifts.shifts

    def _paths(self) -> dict[str, int] | None:
        """Aging calls per path the function probes saw, None when they saw none."""
        res = self.trace_result
        age = (res.paths or {}).get("age", {}) if res is not None else {}
        return dict(age) if sum(age.values()) else None

    def _finish_trace(self) -> None:
        touched = self.passes.touch_counts if self.passes else None
        result = self.session.finish_trace(self.report, touched)
        if result is not None:
            self.trace_result = result
