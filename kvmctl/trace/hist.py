"""Log2 histograms as the BPF programs fill them (BCC's bpf_log2l slots)."""

from __future__ import annotations

from collections.abc import Sequence

from kvmctl.trace.records import Log2Bucket


def slot_bounds(slot: int) -> tuple[int, int]:
    """Value range of slot ``slot``: bpf_log2l(v) = floor(log2 v) + 1, and 0 lands in slot 1."""
    if slot < 0:
        raise ValueError(f"negative log2 slot {slot}")
    if slot <= 1:
        return 0, 1
    return 1 << (slot - 1), (1 << slot) - 1


def log2_buckets(counts: Sequence[int]) -> list[Log2Bucket]:
    """Non-empty slots as (low, high, count), in value order."""
    out = []
    for slot, count in enumerate(counts):
        if count:
            low, high = slot_bounds(slot)
            out.append(Log2Bucket(low, high, int(count)))
    return out


def hist_total(buckets: Sequence[Log2Bucket]) -> int:
    return sum(b.count for b in buckets)


def hist_quantile(buckets: Sequence[Log2Bucket], q: float) -> int | None:
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
