"""The pass loop: guest epochs, ager passes beside or between them, and what each pass saw.

A pass meets the guest either while it keeps touching its pattern (mode
``concurrent``: the VM child runs the pass's epoch over and over while the
ager runs here, so the touched set stays the same through the pass and the
next pass runs the next epoch) or between epochs (mode ``between``:
``epochs_per_pass`` epochs, then the pass). Around each pass the loop reads
the backing file's page-cache residency and the tracer's running aging
totals; the ground truth of every epoch is recomputed from its number.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvmctl.agers import Ager, PassRecord
from kvmctl.errors import GuestError
from kvmctl.experiment.scoring import HarvestTracker
from kvmctl.experiment.session import Session
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.guest.patterns import Pattern, Region, epoch_touched
from kvmctl.report.schema import EpochRow
from kvmctl.units import parse_duration


@dataclass
class Phase:
    """A stretch of guest epochs and the pages it touched (ground truth)."""

    first_epoch: int
    last_epoch: int
    runs: int  # epochs run: first..last once each, or (concurrent) one epoch over and over
    touches: int
    guest_seconds: float
    start_ns: int
    end_ns: int
    touched: np.ndarray  # bool per data page
    touch_counts: np.ndarray  # epochs that touched each page


@dataclass
class PassOutcome:
    """One ager pass: the phase it met, its record, residency and aging totals before and after it."""

    phase: Phase
    record: PassRecord
    resident_at_phase_start: np.ndarray | None  # before the guest's epochs of this pass (after the previous pass)
    resident_before: np.ndarray | None
    resident_after: np.ndarray | None
    aging_before: dict[str, Any] | None
    aging_after: dict[str, Any] | None
    cpu_ns: int = 0  # CPU time of this thread (the ager's) during the pass
    settle_ns: int | None = None  # mode concurrent: the guest ran this long (settle runs + time) before the pass
    harvest_flags: np.ndarray | None = None  # per page, HarvestFlag bits since the previous pass


class PassLoop:
    def __init__(self, session: Session, spec: ExperimentSpec, epochs: list[EpochRow]):
        self.session = session
        self.spec = spec
        self.pattern = Pattern.parse(spec.pattern)
        self.write = spec.access == "write"
        self.epochs = epochs  # the report's epoch rows, appended to as epochs run
        built = session.built
        self.total_pages = built.total_pages
        self.regions: list[Region] = built.regions
        # Summed over every phase; a phase's own arrays are not kept, so a long run's memory stays flat.
        self.touch_counts: np.ndarray | None = None
        self.last_phase: Phase | None = None
        self.harvest = HarvestTracker(self.total_pages)
        self.settle_ns: int | None = None  # the last concurrent phase: from its start to the pass's
        self.resident_last: np.ndarray | None = None  # the latest residency read: where the next phase starts

    @property
    def next_epoch(self) -> int:
        return self.last_phase.last_epoch + 1 if self.last_phase else 0

    def _add(self, phase: Phase) -> Phase:
        counts = phase.touch_counts.astype(np.int64)
        self.touch_counts = counts if self.touch_counts is None else self.touch_counts + counts
        self.last_phase = phase
        self.harvest.touched(phase.touched)
        return phase

    def _phase(self, pattern: Pattern, first: int, last: int, repeats: int, touches: int, guest_seconds: float,
               start_ns: int, end_ns: int, seed: int) -> Phase:
        """Epochs ``first..last``, each run ``repeats`` times."""
        counts = np.zeros(self.total_pages, dtype=np.int64)
        epochs = last - first + 1
        if pattern.varies:
            for e in range(first, last + 1):
                counts += epoch_touched(pattern, self.regions, self.total_pages, e, seed)
        elif epochs > 0:  # every epoch touches the same pages
            counts += epoch_touched(pattern, self.regions, self.total_pages, first, seed) * epochs
        counts *= repeats
        return Phase(first, last, epochs * repeats, touches, guest_seconds, start_ns, end_ns, counts > 0, counts)

    def between(self, pattern: Pattern, write: bool, epochs: int) -> Phase:
        """``epochs`` epochs, one request each, the guest parked in between."""
        if epochs == 0:  # a pass before the guest ran at all
            now = time.monotonic_ns()
            return self._add(Phase(0, -1, 0, 0, 0.0, now, now, np.zeros(self.total_pages, bool),
                                   np.zeros(self.total_pages, np.int32)))
        results = [self.session.vm.epoch(str(pattern), write, self.spec.seed) for _ in range(epochs)]
        for r in results:
            self.epochs.extend(EpochRow(r.epoch, v.vcpu, r.pattern, v.touched, v.guest_seconds, r.wall_seconds,
                                        r.start_ns, r.end_ns) for v in r.vcpus)
        return self._add(self._phase(pattern, results[0].epoch, results[-1].epoch, 1, sum(r.touches for r in results),
                                     sum(r.guest_seconds for r in results), results[0].start_ns,
                                     results[-1].end_ns, self.spec.seed))

    def concurrently(self, during: Callable[[], Any]) -> tuple[Phase, Any]:
        """The next epoch over and over while ``during()`` runs in this thread."""
        vm = self.session.vm
        # One whole run first (a moved hot set is faulted in), then the settle runs and time.
        start = time.monotonic_ns()
        vm.loop_start(str(self.pattern), self.write, self.spec.seed, min_runs=1 + int(self.spec.settle_runs))
        try:
            time.sleep(parse_duration(self.spec.settle))
            self.settle_ns = time.monotonic_ns() - start
            result = during()
        finally:
            s = vm.loop_stop()
        if not s.runs:
            raise GuestError("the guest ran no epoch during the pass", "raise --settle or check the payload")
        self.epochs.append(EpochRow(s.epoch, -1, f"{s.pattern} x{s.runs}", s.touches, s.guest_seconds,
                                    (s.end_ns - s.start_ns) / 1e9, s.start_ns, s.end_ns))
        phase = self._phase(self.pattern, s.epoch, s.epoch, s.runs, s.touches, s.guest_seconds, s.start_ns, s.end_ns,
                            s.seed)
        return self._add(phase), result

    def touch_phase(self) -> Phase:
        """The guest's pattern without a pass (the final phase that shows re-faults)."""
        if self.spec.mode == "between":
            return self.between(self.pattern, self.write, self.spec.epochs_per_pass)
        phase, _ = self.concurrently(lambda: None)
        return phase

    def note_residency(self) -> None:
        """Read the residency the next phase starts from (after populating)."""
        self.resident_last = self.session.residency()

    def run_pass(self, ager: Ager, index: int) -> PassOutcome:
        """One ager pass with residency and aging totals around it."""
        session = self.session
        at_phase_start = self.resident_last

        def one_pass() -> tuple:
            # The aging totals right around the pass, residency outside them: the calls a pass
            # row lists are the ones counted in its window.
            before, aging_before = session.residency(), session.aging_totals()
            cpu0 = time.thread_time_ns()
            record = ager.run_pass(index)
            cpu = time.thread_time_ns() - cpu0
            aging_after = session.aging_totals()
            return record, before, session.residency(), aging_before, aging_after, cpu

        if self.spec.mode == "between":
            # --nested: pass 0 ages the memory before any nested guest ran
            epochs = 0 if self.spec.nested and index == 0 else self.spec.epochs_per_pass
            phase = self.between(self.pattern, self.write, epochs)
            outcome = one_pass()
        else:
            phase, outcome = self.concurrently(one_pass)
        record, before, after, aging_before, aging_after, cpu = outcome
        self.resident_last = after
        settle = self.settle_ns if self.spec.mode == "concurrent" else None
        return PassOutcome(phase, record, at_phase_start, before, after, aging_before, aging_after, cpu_ns=cpu,
                           settle_ns=settle, harvest_flags=session.harvest_take())
