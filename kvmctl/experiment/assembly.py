"""Report assembly: host facts, per-pass rows and scores, ground truth, the fallback verdict.

Everything here writes into the :class:`Report` from what the session and the
pass loop observed; scoring itself is pure (:mod:`kvmctl.experiment.scoring`,
:mod:`kvmctl.experiment.fallback`).
"""

from __future__ import annotations

import os

import numpy as np

from kvmctl.agers import PassRecord
from kvmctl.experiment import hook
from kvmctl.experiment.fallback import FallbackInputs, decide
from kvmctl.experiment.passes import PassOutcome
from kvmctl.experiment.scoring import (HarvestScore, HarvestTracker, ResidencyScore, ShiftScore, YoungScore,
                                       hot_refaults, residency_score, young_score)
from kvmctl.experiment.spec import ExperimentSpec
from kvmctl.experiment.observations import ExperimentTracer
from kvmctl.placement import CpuPlacement, format_cpu_list, thread_affinities
from kvmctl.probe import HostCaps, MmuMode
from kvmctl.probe.memory import LRU_GEN_ENABLED, host_memory_bytes
from kvmctl.report.figures import REQUIRED_FIGURES, get_figure
from kvmctl.report.schema import HarvestDisagreement, Headers, Mmu, PassResult, PassRow, Report, Shift
from kvmctl.trace.records import HarvestFlag, SpteCounts
from kvmctl.units import PAGE_SIZE

# Figures that need the tracer.
_TRACED = ("aging.calls", "aging.pages", "aging.ours_calls", "aging.background_calls", "aging.bits_cleared",
           "contention.mmu_lock_wait_ns", "lost_events", "trace_window.start_ns", "trace_window.end_ns")


def host_facts(report: Report, caps: HostCaps) -> None:
    h = report.host
    h.kernel_release = caps.kernel.release
    h.machine = caps.kernel.machine
    h.kvm_module = caps.kvm.module.value if caps.kvm.module else None
    h.mmu = Mmu.TDP if caps.mmu is MmuMode.TDP else Mmu.SHADOW
    h.tdp_mmu = bool(caps.paging.tdp_mmu)
    lockless = caps.paging.lockless_aging.value
    h.lockless_aging = lockless if isinstance(lockless, bool) else None
    h.lockdown = caps.bpf.lockdown.value if caps.bpf.lockdown else None
    hook = caps.test_clear_young
    h.test_clear_young = hook.value if hook else None
    if not hook:
        report.probes.not_observable["host.test_clear_young"] = hook.reason
    h.cpus = os.cpu_count()
    h.memory_bytes = host_memory_bytes()


def placement_note(placement: CpuPlacement, vm_pid: int, vcpu_tids: list[int]) -> str:
    """The placement asked for, and the vCPU threads' affinity read back from the kernel."""
    seen = thread_affinities(vm_pid)
    vcpus = sorted({format_cpu_list(seen[t]) for t in vcpu_tids if t in seen})
    return (f"CPU placement: {placement.describe()}; vCPU threads may run on CPUs {' / '.join(vcpus)} "
            "(sched_getaffinity of each vCPU thread)")


def tracer_started(report: Report, tracer: ExperimentTracer) -> None:
    report.probes.chosen.update(tracer.chosen)
    report.probes.not_observable.update(tracer.not_observable)
    report.trace_window.start_ns = tracer.window_start_ns
    h = tracer.headers
    report.host.headers = Headers.EXACT if h.exact else Headers.MISMATCHED
    report.host.headers_version = h.release
    if h.note():
        report.notes.append(h.note())


def not_traced(report: Report, reason: str) -> None:
    report.host.headers = Headers.NONE
    for figure in _TRACED:
        report.probes.not_observable[figure] = reason


def pass_row(index: int, outcome: PassOutcome, prev_hot: np.ndarray | None, report: Report,
             tracer: ExperimentTracer | None = None, harvest: HarvestTracker | None = None,
             ) -> tuple[PassRow, ResidencyScore | None, YoungScore | None, HarvestScore | None]:
    """The report row of one pass, with its residency and young/idle scores against the pages touched."""
    record, phase = outcome.record, outcome.phase
    row = PassRow(pass_no=index, ager=record.ager, start_ns=record.start_ns, end_ns=record.end_ns,
                  touched_pages=int(phase.touched.sum()), cold_pages=int((~phase.touched).sum()),
                  cpu_ns=outcome.cpu_ns, ager_ns=record.end_ns - record.start_ns, settle_ns=outcome.settle_ns)
    scored = None
    if harvest is not None and outcome.harvest_flags is not None:
        scored = harvest.score(outcome.harvest_flags, HarvestFlag.AGED_MAPPED, HarvestFlag.CLEARED)
        row.harvest_precision, row.harvest_recall = scored.precision, scored.recall
    if prev_hot is not None:
        row.moved_pages = int((phase.touched & ~prev_hot).sum())
    score = _residency_figures(row, outcome, prev_hot)
    young = young_score(record.idle, record.observed, phase.touched) if record.idle is not None else None
    _aging_figures(row, outcome, tracer)
    _result(row, record)
    report.notes.extend(f"pass {index}: {note}" for note in record.notes + record.errors)
    return row, score, young, scored


_HISTORY_WORDS = {HarvestFlag.SET: "mapped", HarvestFlag.UNMAPPED: "unmapped", HarvestFlag.AGED: "aged",
                  HarvestFlag.AGED_MAPPED: "while mapped", HarvestFlag.CLEARED: "cleared"}
MAX_DISAGREEMENTS = 20


def harvest_summary(report: Report, tracker: HarvestTracker, scores: list[HarvestScore],
                    gfns: np.ndarray) -> None:
    """aging.harvest: totals over the scored passes and the first disagreeing gfns with their history."""
    h = report.aging.harvest
    h.passes = len(scores)
    h.expected_young = sum(s.expected for s in scores)
    h.observed_young = sum(s.observed for s in scores)
    h.agreed = sum(s.agreed for s in scores)
    h.precision = h.agreed / h.observed_young if h.observed_young else None
    h.recall = h.agreed / h.expected_young if h.expected_young else None
    for p, s in enumerate(scores):
        for index in s.disagreeing[: MAX_DISAGREEMENTS - len(h.disagreements)]:
            flags = int(tracker.flags[p][index])
            h.disagreements.append(HarvestDisagreement(
                int(gfns[index]), p, bool(tracker.touches[p][index] and flags & HarvestFlag.AGED_MAPPED),
                bool(flags & HarvestFlag.CLEARED), tracker.history(int(index), _HISTORY_WORDS)))
    for figure, value in (("precision", h.precision), ("recall", h.recall)):
        if value is None:
            report.probes.not_observable.setdefault(f"aging.harvest.{figure}", "no gfn was expected or observed "
                                                    "young in any pass")


def pass_cost(report: Report, guest_pages: int, source: str | None) -> None:
    """aging.pass_cost: the mean pass, from KVM's aging time where traced, else the passes' wall time."""
    c, rows = report.aging.pass_cost, report.passes
    if not rows or not guest_pages:
        return
    gib = guest_pages * PAGE_SIZE / (1 << 30)
    kvm = [r.kvm_aging_ns for r in rows if r.kvm_aging_ns is not None]
    if source and len(kvm) == len(rows):
        c.source, ns = source, sum(kvm) / len(kvm)
    else:
        c.source = "pass window (wall time of the ager's pass: the host's own walk and reclaim included)"
        ns = sum(r.ager_ns if r.ager_ns is not None else r.end_ns - r.start_ns for r in rows) / len(rows)
    c.seconds = ns / 1e9
    c.seconds_per_gib = c.seconds / gib
    c.ns_per_page = ns / guest_pages
    cpu = [r.cpu_ns for r in rows if r.cpu_ns is not None]
    if cpu:
        c.cpu_seconds = sum(cpu) / len(cpu) / 1e9
        c.cpu_seconds_per_gib = c.cpu_seconds / gib


def _residency_figures(row: PassRow, outcome: PassOutcome, prev_hot: np.ndarray | None) -> ResidencyScore | None:
    hot = outcome.phase.touched
    before, after = outcome.resident_before, outcome.resident_after
    if outcome.resident_at_phase_start is not None:
        row.refaults = hot_refaults(outcome.resident_at_phase_start, hot)
    if before is None or after is None:
        return None
    score = residency_score(before, after, hot)
    row.hot_resident_fraction = score.hot_resident_fraction
    row.cold_resident_fraction = score.cold_resident_fraction
    row.evicted_pages, row.evicted_hot_pages, row.evicted_cold_pages = \
        score.evicted_pages, score.evicted_hot, score.evicted_cold
    if prev_hot is not None and (cooled := prev_hot & ~hot).any():
        row.cooled_resident_fraction = float(after[cooled].mean())
    return score


def _aging_figures(row: PassRow, outcome: PassOutcome, tracer: ExperimentTracer | None) -> None:
    s0, s1 = outcome.aging_before, outcome.aging_after
    if s0 is None or s1 is None:
        return
    if s0.get("read_ns") and s1.get("read_ns"):  # the window the calls below were counted in
        row.start_ns, row.end_ns = min(row.start_ns, s0["read_ns"][0]), max(row.end_ns, s1["read_ns"][1])
    row.aging_calls = s1["calls"] - s0["calls"]
    row.aging_pages = s1["pages"] - s0["pages"]
    row.ours_calls = s1["ours_calls"] - s0["ours_calls"]
    row.background_calls = s1["background_calls"] - s0["background_calls"]
    if s0.get("kvm_aging_ns") is not None and s1.get("kvm_aging_ns") is not None:
        row.kvm_aging_ns = s1["kvm_aging_ns"] - s0["kvm_aging_ns"]
    if s0.get("paths") is not None and s1.get("paths") is not None:
        row.aging_paths = {k: s1["paths"].get(k, 0) - s0["paths"].get(k, 0) for k in s1["paths"]}
    if tracer is not None:
        locks = tracer.pass_lock_figures(s0, s1)
        row.lockless_share, row.mmu_lock_acquisitions = locks.lockless_share, locks.acquisitions
        if s0.get("notifier") is not None and s1.get("notifier") is not None:
            during = s1["notifier"].minus(s0["notifier"])
            row.notifier_paths = hook.paths_by_label(during)
            row.hook_cleared = hook.hook_figures(during, None, None).cleared


def _result(row: PassRow, record: PassRecord) -> None:
    """Failed, did nothing, or worked: in words, for the pass table."""
    if record.errors:
        row.result, row.result_reason = PassResult.FAILED, "; ".join(record.errors)
    elif record.did_nothing:
        row.result, row.result_reason = PassResult.DID_NOTHING, record.did_nothing
    elif record.ager != "passive" and row.ours_calls == 0 and not row.evicted_pages:
        row.result = PassResult.DID_NOTHING
        row.result_reason = f"the {record.ager} ager made no aging call" + \
            (" and evicted nothing" if row.evicted_pages == 0 else "")


def ager_settings(report: Report, settings: dict[str, str]) -> None:
    """Host settings the ager chose for its passes: in the notes, and the hook's cap where it applies."""
    if "lru_gen_cap" in settings:
        report.aging.test_clear_young.lru_gen_cap = settings["lru_gen_cap"]
        report.notes.append(f"the mglru ager ran its passes with {LRU_GEN_ENABLED} {settings.get('lru_gen_enabled')}: "
                            f"test_clear_young cap 0x0008 {settings['lru_gen_cap']} (restored afterwards; "
                            "--ager-opt test_clear_young=on|off|keep)")
    for key, value in settings.items():
        if key not in ("lru_gen_cap", "lru_gen_enabled"):
            report.notes.append(f"ager setting {key}={value}")


def mapping_counts(report: Report, spte: SpteCounts | None, at_build: dict, after_populate: dict,
                   after_writeback: dict) -> None:
    """Mappings of the data pages (kvmmmu tracepoints) beside the VM's pages_4k gauge."""
    if spte is None:
        return
    sp = report.spte
    sp.set_spte, sp.remapped = spte.set_spte, spte.refaults
    sp.gfns_mapped = int((spte.mappings_per_gfn > 0).sum())
    sp.shadow_pages_created = spte.shadow_pages_created
    sp.pages_4k_at_build = at_build.get("pages_4k")
    sp.pages_4k_after_populate = after_populate.get("pages_4k")
    sp.pages_4k_after_writeback = after_writeback.get("pages_4k")
    sp.pages_4k_at_end = report.vm_stats.get("pages_4k")


def ground_truth(report: Report, spec: ExperimentSpec, scores: list[ResidencyScore], young: list[YoungScore],
                 shifts: list[ShiftScore], final_refaults: int | None) -> None:
    gt = report.ground_truth
    gt.shifts = [Shift(s.pass_no, s.moved_pages, s.cooled_pages, s.passes_to_adapt, list(s.cooled_resident_fraction))
                 for s in shifts]
    done = [s.passes_to_adapt for s in shifts if s.passes_to_adapt is not None]
    gt.passes_to_adapt = max(done) if done else None
    if not done:
        report.probes.not_observable["ground_truth.passes_to_adapt"] = (
            "the hot set did not move between passes" if not shifts else
            "the run ended before the host evicted the pages of any moved-away hot set")
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
        gt.final_refaults = final_refaults
        gt.refaults = sum(r.refaults or 0 for r in report.passes) + (final_refaults or 0)
        gt.scored_by = f"{spec.ager} (page-cache residency via mincore on the backing file)"
    else:
        reason = (f"{spec.backing} backing: page-cache residency (mincore) applies only to file and memfd "
                  "backings; anonymous guest memory is never evicted here (no swap)")
        for f in ("ground_truth.hot_resident_fraction", "ground_truth.evicted_cold_fraction",
                  "ground_truth.refaults"):
            report.probes.not_observable[f] = reason
    if young:
        gt.precision, gt.recall = young[-1].precision, young[-1].recall
    else:
        reason = f"the {spec.ager} ager reports no per-page young/idle verdicts"
        report.probes.not_observable.setdefault("ground_truth.precision", reason)
        report.probes.not_observable.setdefault("ground_truth.recall", reason)


def _shares(paths: dict[str, int] | None) -> str:
    total = sum((paths or {}).values())
    if not total:
        return "no aging call seen"
    return ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in sorted(paths.items()) if v)


def fallback(report: Report, spec: ExperimentSpec, paths: dict[str, int] | None, shadow_pages: int | None) -> None:
    """The fallback verdict; with --nested, the paths before and after the nested guest ran."""
    r = report
    notifier: dict[str, int] = {}
    for row in r.aging.paths:
        notifier[row.path] = notifier.get(row.path, 0) + row.calls
    res = decide(FallbackInputs(host_mmu=r.host.mmu.value if r.host.mmu else "shadow", path_calls=paths,
                                shadow_pages_created=shadow_pages, vm_stats=r.vm_stats,
                                notifier_paths=notifier or None))
    r.fallback.verdict, r.fallback.tdp_share, r.fallback.rmap_share = res.verdict, res.tdp_share, res.rmap_share
    r.fallback.evidence = res.evidence
    if spec.nested and r.passes:
        for field in ("aging_paths", "notifier_paths"):
            if getattr(r.passes[0], field) is None:
                continue
            after: dict[str, int] = {}
            for row in r.passes[1:]:
                for k, v in (getattr(row, field) or {}).items():
                    after[k] = after.get(k, 0) + v
            r.fallback.evidence.insert(0, f"{field}: before the nested guest ran (pass 0): "
                                          f"{_shares(getattr(r.passes[0], field))}; after it ran "
                                          f"(passes 1..{len(r.passes) - 1}): {_shares(after)}")
    if res.rmap_share_reason:
        r.notes.append(f"fallback.rmap_share: {res.rmap_share_reason}")
        if res.rmap_share is None:
            r.probes.not_observable["fallback.rmap_share"] = res.rmap_share_reason


def explain_nulls(report: Report) -> None:
    """Every required figure that is still null says why, also in a report cut short."""
    for name in REQUIRED_FIGURES:
        if get_figure(report, name) is None and report.reason_for(name) == "no reason recorded":
            report.probes.not_observable.setdefault(
                name, "the run was cut short first" if not report.complete else "not measured")
