"""Harvest scoring: what aging cleared against what the guest touched, pass by pass."""

from __future__ import annotations

import numpy as np

from kvmctl.experiment.assembly import harvest_summary, pass_cost
from kvmctl.experiment.scoring import HarvestTracker
from kvmctl.report.schema import PassRow, Report
from kvmctl.trace.records import HarvestFlag as F

AGED_MAPPED = F.AGED | F.AGED_MAPPED


def flags(*per_page: int) -> np.ndarray:
    return np.array(per_page, dtype=np.uint8)


def score(t: HarvestTracker, f: np.ndarray):
    return t.score(f, F.AGED_MAPPED, F.CLEARED)


def test_a_page_is_expected_young_once_per_touch_and_only_while_mapped():
    t = HarvestTracker(4)
    t.touched(np.array([1, 1, 1, 0], bool))  # populate touched three pages
    # pass 0: page 0 mapped and cleared; page 1 aged while unmapped (nothing to clear); page 2 not aged
    s0 = score(t, flags(AGED_MAPPED | F.CLEARED | F.MAPPED, F.AGED, 0, AGED_MAPPED | F.MAPPED))
    assert (s0.expected, s0.observed, s0.agreed, s0.precision, s0.recall) == (1, 1, 1, 1.0, 1.0)
    # pass 1, nothing touched since: page 0 aged again must not read young; page 1 stays owed (never harvested)
    t.touched(np.zeros(4, bool))
    s1 = score(t, flags(AGED_MAPPED | F.MAPPED, F.SET | AGED_MAPPED | F.CLEARED, 0, 0))
    assert (s1.expected, s1.observed, s1.agreed) == (1, 1, 1)
    # pass 2: page 3 touched and aged, but aging missed its bit (a lost clear or a missed flush)
    t.touched(np.array([0, 0, 0, 1], bool))
    s2 = score(t, flags(AGED_MAPPED, AGED_MAPPED, 0, AGED_MAPPED | F.MAPPED))
    assert (s2.expected, s2.observed, s2.recall) == (1, 0, 0.0)
    assert list(s2.disagreeing) == [3]
    assert t.history(3, {F.AGED: "aged", F.AGED_MAPPED: "while mapped", F.CLEARED: "cleared"}) == \
        "p0: aged, while mapped; p1: -; p2: touched, aged, while mapped"


def test_a_clear_nobody_touched_costs_precision():
    t = HarvestTracker(2)
    s = score(t, flags(AGED_MAPPED | F.CLEARED, AGED_MAPPED))
    assert (s.expected, s.observed, s.precision, s.recall) == (0, 1, 0.0, None)


def test_summary_totals_the_passes_and_names_the_disagreements():
    t = HarvestTracker(3)
    t.touched(np.ones(3, bool))
    scores = [score(t, flags(AGED_MAPPED | F.CLEARED, AGED_MAPPED | F.CLEARED, AGED_MAPPED))]
    report = Report()
    harvest_summary(report, t, scores, np.array([0x100000, 0x100001, 0x100002], dtype=np.uint64))
    h = report.aging.harvest
    assert (h.expected_young, h.observed_young, h.agreed, h.passes) == (3, 2, 2, 1)
    assert h.precision == 1.0 and h.recall == 2 / 3
    [d] = h.disagreements
    assert (d.gfn, d.pass_no, d.expected, d.observed) == (0x100002, 0, True, False)
    assert d.history.startswith("p0: touched")


def test_pass_cost_prefers_kvm_aging_time_and_says_so():
    report = Report()
    report.passes = [PassRow(0, "mglru", 0, 2_000_000_000, kvm_aging_ns=100_000_000, cpu_ns=500_000_000),
                     PassRow(1, "mglru", 0, 1_000_000_000, kvm_aging_ns=300_000_000, cpu_ns=300_000_000)]
    pass_cost(report, 262144, "kvm_age_notifier request latency")  # 1 GiB
    c = report.aging.pass_cost
    assert c.source == "kvm_age_notifier request latency"
    assert c.seconds == 0.2 and c.seconds_per_gib == 0.2 and c.ns_per_page == 200_000_000 / 262144
    assert c.cpu_seconds == 0.4
    report.passes[1].kvm_aging_ns = None  # not traced throughout: the pass window instead
    pass_cost(report, 262144, "kvm_age_notifier request latency")
    assert c.source.startswith("pass window") and c.seconds == 1.5
