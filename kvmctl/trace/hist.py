"""Log2 histograms as the BPF programs fill them (BCC's bpf_log2l slots)."""

from __future__ import annotations

from collections.abc import Sequence

from kvmctl.vocab import Bucket


def slot_bounds(slot: int) -> tuple[int, int]:
    """Value range of slot ``slot``: bpf_log2l(v) = floor(log2 v) + 1, and 0 lands in slot 1."""
    if slot < 0:
        raise ValueError(f"negative log2 slot {slot}")
    if slot <= 1:
        return 0, 1
    return 1 << (slot - 1), (1 << slot) - 1


def log2_buckets(counts: Sequence[int], dense: bool = False) -> list[Bucket]:
    """Slots as buckets in value order: the non-empty ones, or (``dense``) every one up to the last non-empty.

    Slot 0 is never filled (bpf_log2l(0) is 1), so a dense axis starts at slot 1, "0 -> 1", the way
    BCC's print_log2_hist prints it.
    """
    counts = [int(c) for c in counts]
    if dense:
        last = max((i for i, c in enumerate(counts) if c), default=0)
        return [Bucket(*slot_bounds(slot), counts[slot]) for slot in range(1, last + 1)]
    return [Bucket(*slot_bounds(slot), count) for slot, count in enumerate(counts) if count]


def hist_total(buckets: Sequence[Bucket]) -> int:
    return sum(b.count for b in buckets)


def hist_quantile(buckets: Sequence[Bucket], q: float) -> int | None:
    """Upper bound of the bucket holding quantile ``q`` (0..1); None when empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside 0..1")
    total = hist_total(buckets)
    if not total:
        return None
    rank, seen = q * total, 0
    for b in buckets:
        seen += b.count
        if seen >= rank:
            return b.high
    return buckets[-1].high
