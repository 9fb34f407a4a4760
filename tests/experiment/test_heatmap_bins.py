"""Heat-map binning of per-page counts (kvmctl.experiment.observations._heatmaps): pure logic, no host needs.

Per-page arrays run over the data memslots laid end to end (the tracer's
per-gfn index); each memslot gets its own map of at most HEATMAP_BINS bins,
bin i covering the slot's pages [i*pages//bins, (i+1)*pages//bins).
"""

from __future__ import annotations

import numpy as np

from kvmctl.experiment.observations import _heatmaps
from kvmctl.report import schema as rm

PAGE = 4096
GIB4 = 1 << 32


def slot(n: int, pages: int, gpa: int = GIB4) -> rm.Memslot:
    return rm.Memslot(slot=n, gpa_start=gpa, gpa_end=gpa + pages * PAGE, hva_start=0x7F0000000000 + gpa,
                      hva_end=0x7F0000000000 + gpa + pages * PAGE, size=pages * PAGE, backing="file")


def test_two_pages_per_bin_sum_in_order():
    (h,) = _heatmaps([slot(1, 128)], np.arange(128), np.ones(128, dtype=np.int64))
    assert (h.slot, h.pages, h.bins) == (1, 128, rm.HEATMAP_BINS)
    assert h.aged == [2 * i + 2 * i + 1 for i in range(64)]  # pages 2i and 2i+1
    assert h.touched == [2] * 64


def test_uneven_bins_keep_every_page_and_follow_the_documented_edges():
    rng = np.random.default_rng(3)
    aged = rng.integers(0, 9, 100)
    (h,) = _heatmaps([slot(1, 100)], aged, None)
    assert h.bins == 64 and sum(h.aged) == int(aged.sum())
    edges = [i * 100 // 64 for i in range(64)] + [100]
    assert h.aged == [int(aged[edges[i]:edges[i + 1]].sum()) for i in range(64)]
    assert h.touched == [0] * 64  # no ground truth: zeros, not a missing list


def test_small_memslot_gets_one_bin_per_page():
    (h,) = _heatmaps([slot(1, 10)], np.arange(10) * 3, np.arange(10))
    assert h.bins == 10 and h.aged == [3 * i for i in range(10)] and h.touched == list(range(10))


def test_second_memslot_starts_where_the_first_ends_in_the_per_page_array():
    a, b = slot(1, 64), slot(2, 128, gpa=GIB4 + 64 * PAGE)
    aged = np.concatenate([np.full(64, 1), np.full(128, 5)])
    touched = np.concatenate([np.zeros(64, dtype=np.int64), np.arange(128)])
    ha, hb = _heatmaps([a, b], aged, touched)
    assert ha.aged == [1] * 64 and ha.touched == [0] * 64
    assert hb.aged == [10] * 64 and hb.touched == [2 * i + 2 * i + 1 for i in range(64)]


def test_counts_capped_short_of_the_guest_are_padded_with_zeros():
    # the tracer's per-gfn arrays stop at its cap: the pages past it read as 0, never wrap into another slot
    (h,) = _heatmaps([slot(1, 128)], np.ones(100, dtype=np.int64), None)
    assert sum(h.aged) == 100
    assert h.aged[:50] == [2] * 50 and h.aged[50] == 0 and h.aged[-1] == 0


def test_same_bins_as_the_report_models_own_binning():
    rng = np.random.default_rng(11)
    slots = [slot(1, 3000), slot(2, 777, gpa=GIB4 + 3000 * PAGE)]
    aged = rng.integers(0, 50, 3777)
    touched = rng.integers(0, 4, 3777)
    got = _heatmaps(slots, aged, touched)
    base = 0
    for m, h in zip(slots, got, strict=True):
        gfn0 = m.gpa_start // PAGE
        per_gfn = lambda arr: {gfn0 + i: int(arr[base + i]) for i in range(m.pages)}  # noqa: E731
        ref = rm.HeatMap.from_gfn_counts(m, per_gfn(aged), per_gfn(touched))
        assert (h.bins, h.aged, h.touched) == (ref.bins, ref.aged, ref.touched)
        base += m.pages
