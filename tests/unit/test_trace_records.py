"""Plain records: memslot geometry and per-gfn views."""

from __future__ import annotations

import numpy as np

from kvmctl.trace.records import EventKind, MemslotRange, PerGfnCounts, TraceTarget


def test_per_gfn_counts_split_by_memslot_and_cap():
    slots = [MemslotRange(1, 0x7000_0000, 3 << 12, 4 << 30), MemslotRange(2, 0x9000_0000, 4 << 12, 8 << 30)]
    counts = np.arange(5, dtype=np.uint64)  # capped at 5 of 7 pages
    per = PerGfnCounts(slots, 5, {"age": counts})
    (m1, a1), (m2, a2) = per.by_memslot(EventKind.AGE)
    assert (m1.slot, a1.tolist()) == (1, [0, 1, 2])
    assert (m2.slot, a2.tolist()) == (2, [3, 4])
    assert m2.gfn_start == (8 << 30) >> 12


def test_target_lays_memslots_end_to_end():
    target = TraceTarget(1, [MemslotRange(1, 0x1000_0000, 2 << 20, 4 << 30), MemslotRange(2, 0x2000_0000, 1 << 20, 0)])
    assert target.guest_pages == 768
    assert target.index_bases() == [0, 512]
    assert target.memslots[0].hva_end == 0x1000_0000 + (2 << 20)
