"""Histogram text in BCC's ``print_log2_hist`` layout, so a reader of kvmctl's reports reads them as
BCC's tools print them; time histograms may write their bucket bounds with units (ns/us/ms)."""

from __future__ import annotations

from collections.abc import Callable

from kvmctl.report.schema import Bucket

_STARS_MAX = 40


def _stars(val: int, val_max: int, width: int) -> str:
    if val_max <= 0:
        return ""
    n = min(width, width * val // val_max)  # BCC's loop draws floor(width*val/max) stars
    text = "*" * n
    if val > val_max:
        text = text[:-1] + "+"
    return text


def log2_hist_lines(buckets: list[Bucket], val_type: str, bound: Callable[[int], str] | None = None) -> list[str]:
    """BCC's layout; ``bound`` writes a bucket bound with its unit ('2.05 us') instead of a bare integer."""
    if not buckets or not any(b.count for b in buckets):
        return ["     (no samples)"]
    val_max = max(b.count for b in buckets)
    if bound is not None or max(b.high for b in buckets) < (1 << 32):
        header, body, stars = "     %-19s : count     distribution", "%10s -> %-10s : %-8d |%-*s|", _STARS_MAX
    else:
        header, body = "               %-29s : count     distribution", "%20s -> %-20s : %-8d |%-*s|"
        stars = _STARS_MAX // 2
    lines = [header % val_type]
    for b in buckets:
        low, high = (bound(b.low), bound(b.high + 1)) if bound else (b.low, b.high)
        lines.append(body % (low, high, b.count, stars, _stars(b.count, val_max, stars)))
    return lines


def time_buckets(buckets: list[Bucket]) -> list[Bucket]:
    """From the first to the last non-empty bucket, the empty log2 buckets between them filled in."""
    filled = [b for b in buckets if b.count]
    if not filled:
        return []
    by_low = {b.low: b for b in buckets}
    out, low = [], filled[0].low
    while low <= filled[-1].low:
        high = 1 if low == 0 else 2 * low - 1
        out.append(by_low.get(low, Bucket(low, high, 0)))
        low = 2 if low == 0 else 2 * low
    return out
