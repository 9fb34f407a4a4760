"""Ground-truth scoring on hand-made page masks (kvmctl.experiment.scoring)."""

from __future__ import annotations

import numpy as np
import pytest

from kvmctl.experiment.scoring import ShiftTracker, hot_refaults, residency_score, young_score


def mask(n: int, *on: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[list(on)] = True
    return m


def test_residency_counts_hot_cold_and_evicted_pages():
    # 10 pages: 0-3 hot; before the pass 0-8 resident; the pass evicts 3 (hot), 6, 7 (cold); 9 was never resident
    hot = mask(10, 0, 1, 2, 3)
    before = mask(10, *range(9))
    after = mask(10, 0, 1, 2, 4, 5, 8)
    s = residency_score(before, after, hot)
    assert (s.hot_pages, s.cold_pages) == (4, 6)
    assert s.hot_resident_fraction == pytest.approx(3 / 4)
    assert s.cold_resident_fraction == pytest.approx(3 / 6)  # 4, 5, 8 of 4..9
    assert (s.evicted_pages, s.evicted_hot, s.evicted_cold) == (3, 1, 2)
    assert s.evicted_cold_fraction == pytest.approx(2 / 3)


def test_pages_that_were_not_resident_before_are_not_evicted():
    hot = mask(6, 0, 1)
    before = mask(6, 0, 1)  # 2..5 already out
    after = mask(6, 0)  # 1 evicted; 2..5 still out: not evictions of this pass
    s = residency_score(before, after, hot)
    assert (s.evicted_pages, s.evicted_hot, s.evicted_cold) == (1, 1, 0)
    assert s.evicted_cold_fraction == 0.0
    assert s.cold_resident_fraction == 0.0


def test_a_page_that_came_back_is_not_an_eviction():
    hot = mask(4, 0)
    before = mask(4, 0, 1)
    after = mask(4, 0, 2)  # 2 faulted in during the pass, 1 evicted
    s = residency_score(before, after, hot)
    assert (s.evicted_pages, s.evicted_cold) == (1, 1)


def test_nothing_evicted_leaves_the_cold_fraction_undefined():
    hot = mask(4, 0, 1)
    everything = np.ones(4, dtype=bool)
    s = residency_score(everything, everything, hot)
    assert s.evicted_pages == 0
    assert s.evicted_cold_fraction is None
    assert s.hot_resident_fraction == s.cold_resident_fraction == 1.0


def test_all_hot_or_all_cold_gives_none_for_the_empty_side():
    before, after = np.ones(3, dtype=bool), mask(3, 0)
    all_hot = residency_score(before, after, np.ones(3, dtype=bool))
    assert all_hot.cold_resident_fraction is None and all_hot.cold_pages == 0
    assert all_hot.hot_resident_fraction == pytest.approx(1 / 3)
    all_cold = residency_score(before, after, np.zeros(3, dtype=int))  # any 0/1 dtype is a mask
    assert all_cold.hot_resident_fraction is None and all_cold.hot_pages == 0
    assert (all_cold.evicted_hot, all_cold.evicted_cold) == (0, 2)


def test_young_precision_and_recall_over_every_page():
    # touched 0-3; the ager calls 0, 1, 4 young (idle = the rest)
    touched = mask(8, 0, 1, 2, 3)
    idle = ~mask(8, 0, 1, 4)
    ys = young_score(idle, None, touched)
    assert (ys.observed, ys.predicted_young, ys.touched, ys.true_young) == (8, 3, 4, 2)
    assert ys.precision == pytest.approx(2 / 3)
    assert ys.recall == pytest.approx(2 / 4)


def test_young_score_counts_only_observed_pages():
    # page idle tracking could read only pages 0-3 (others had no PFN): 4-7 count neither way
    touched = mask(8, 0, 1, 5, 6)
    idle = mask(8, 1, 2, 3)  # 0 young among the observed; 4-7 "not idle" but unobserved
    observed = mask(8, 0, 1, 2, 3)
    ys = young_score(idle, observed, touched)
    assert (ys.observed, ys.predicted_young, ys.touched, ys.true_young) == (4, 1, 2, 1)
    assert ys.precision == 1.0
    assert ys.recall == 0.5


def test_young_score_without_young_or_touched_pages_is_undefined():
    ys = young_score(np.ones(4, dtype=bool), None, mask(4, 1))
    assert ys.predicted_young == 0 and ys.precision is None and ys.recall == 0.0
    ys = young_score(np.zeros(4, dtype=bool), None, mask(4))
    assert ys.touched == 0 and ys.recall is None and ys.precision == 0.0


def test_perfect_ager_scores_one():
    rng = np.random.default_rng(7)
    touched = rng.random(1000) < 0.25
    ys = young_score(~touched, None, touched)
    assert ys.precision == ys.recall == 1.0
    before = np.ones(1000, dtype=bool)
    s = residency_score(before, touched, touched)  # keeps exactly the hot set
    assert s.hot_resident_fraction == 1.0 and s.evicted_cold_fraction == 1.0
    assert s.evicted_pages == int((~touched).sum())


def test_hot_refaults_are_hot_pages_that_were_not_resident_when_the_phase_began():
    resident = mask(8, 0, 1, 2, 3, 4)
    assert hot_refaults(resident, mask(8, 4, 5, 6)) == 2  # 5 and 6 came back from the file
    assert hot_refaults(resident, mask(8)) == 0


def _window(n: int, lo: int, hi: int) -> np.ndarray:
    return mask(n, *range(lo, hi))


def test_shift_tracker_follows_each_move_until_the_cooled_pages_are_evicted():
    t = ShiftTracker()
    t.observe(0, _window(8, 0, 2), _window(8, 0, 4))  # first pass: nothing moved yet
    t.observe(1, _window(8, 2, 4), _window(8, 0, 4))  # moved; the cooled pages 0-1 stay resident
    t.observe(2, _window(8, 4, 6), mask(8, 1, 2, 3, 4, 5))  # moved again; page 0 went, 1 stays
    t.observe(3, _window(8, 6, 8), _window(8, 4, 8))  # 0-3 gone: the first move is adapted to
    first, second, third = t.shifts
    assert (first.pass_no, first.moved_pages, first.cooled_pages) == (1, 2, 2)
    assert first.cooled_resident_fraction == [1.0, 0.5, 0.0] and first.passes_to_adapt == 3
    assert second.cooled_resident_fraction == [1.0, 0.0] and second.passes_to_adapt == 2
    assert third.cooled_resident_fraction == [1.0] and third.passes_to_adapt is None  # the run ended first


def test_shift_tracker_a_page_hot_again_is_not_cold_and_a_growing_set_needs_no_adapting():
    t = ShiftTracker()
    t.observe(0, _window(6, 0, 2), _window(6, 0, 6))
    t.observe(1, _window(6, 0, 4), _window(6, 0, 6))  # grew: nothing went cold
    assert t.shifts[0].passes_to_adapt == 0 and t.shifts[0].cooled_pages == 0
    t.observe(2, _window(6, 2, 4), _window(6, 2, 6))  # 0-1 went cold and were evicted at once
    t.observe(3, _window(6, 2, 4), _window(6, 2, 6))  # the same set: no move
    assert [s.pass_no for s in t.shifts] == [1, 2] and t.shifts[1].passes_to_adapt == 1
    t2 = ShiftTracker()
    t2.observe(0, _window(6, 0, 2), _window(6, 0, 6))
    t2.observe(1, _window(6, 2, 4), _window(6, 0, 6))
    t2.observe(2, _window(6, 0, 2), _window(6, 0, 4))  # the cooled pages are hot again: they leave the set
    assert t2.shifts[0].cooled_resident_fraction == [1.0, 0.0] and t2.shifts[0].passes_to_adapt == 2
