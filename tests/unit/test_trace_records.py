"""Plain records: memslot geometry and per-gfn views."""

from __future__ import annotations

import numpy as np

from kvmctl.kvm import Memslot
from kvmctl.trace.records import EventKind, PerGfnCounts, TraceTarget


def test_per_gfn_counts_split_by_memslot_and_cap():
    slots = [Memslot.at(1, 4 << 30, 3 << 12, 0x7000_0000), Memslot.at(2, 8 << 30, 4 << 12, 0x9000_0000)]
    counts = np.arange(5, dtype=np.uint64)  # capped at 5 of 7 pages
    per = PerGfnCounts(slots, 5, {"age": counts})
    (m1, a1), (m2, a2) = per.by_memslot(EventKind.AGE)
    assert (m1.slot, a1.tolist()) == (1, [0, 1, 2])
    assert (m2.slot, a2.tolist()) == (2, [3, 4])
    assert m2.gfn_start == (8 << 30) >> 12


def test_target_lays_memslots_end_to_end():
    target = TraceTarget(1, [Memslot.at(1, 4 << 30, 2 << 20, 0x1000_0000), Memslot.at(2, 0, 1 << 20, 0x2000_0000)])
    assert target.guest_pages == 768
    assert target.index_bases() == [0, 512]
    assert target.memslots[0].hva_end == 0x1000_0000 + (2 << 20)
