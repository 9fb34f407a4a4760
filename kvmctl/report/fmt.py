"""How every renderer writes a report's numbers, its missing figures and its histogram names.

Times carry a unit (perf's "714.74 us", never a bare count of nanoseconds),
counts are whole, fractions are percentages. A null figure reads as one of
three things: "n/a" when the set it is a share of is empty (no page was
evicted, so no share of evicted pages can be cold), "not observable here"
with the probe's reason, or "not measured" when the run ended first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvmctl.report.figures import Unit, get_figure
from kvmctl.report.schema import Report


def fmt_count(n: float | int | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, float) and not n.is_integer():
        return f"{n:,.1f}"
    return f"{int(n):,}"


def fmt_whole(n: float | int | None) -> str:
    """A count as whole units (a mean of page counts is still shown in pages)."""
    return "-" if n is None else f"{round(n):,}"


def fmt_fraction(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}%"


def fmt_ns(ns: float | int | None) -> str:
    """perf's time style: '714.74 us', '13.58 ms'."""
    if ns is None:
        return "-"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= div:
            return f"{ns / div:.2f} {unit}"
    return f"{ns:.0f} ns"


def fmt_ns_short(ns: float, micro: str = "us") -> str:
    """Three significant digits, for axes and bucket bounds: '512 ns', '2.05 us', '16.4 us', '1.05 ms'."""
    for unit, div in (("s", 1e9), ("ms", 1e6), (micro, 1e3), ("ns", 1.0)):
        if abs(ns) >= div or unit == "ns":
            v = ns / div
            digits = 0 if abs(v) >= 100 or unit == "ns" else (1 if abs(v) >= 10 else 2)
            return f"{v:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def fmt_seconds(s: float) -> str:
    """A duration given in seconds, to three digits without trailing zeros: '9.63 s', '12 s', '100 ms'."""
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("us", 1e6)):
        v = s * scale
        if abs(v) >= 1 or unit == "us":
            return f"{v:,.0f} {unit}" if abs(v) >= 1000 else f"{v:.3g} {unit}"
    raise AssertionError("unreachable")


def fmt_value(value: float | None, unit: Unit) -> str:
    if unit is Unit.FRACTION:
        return fmt_fraction(value)
    if unit is Unit.NS:
        return fmt_ns(value)
    return fmt_count(value)


# A share of a set that can be empty -> (the figure counting that set, what an empty set means).
EMPTY_SETS: dict[str, tuple[str, str]] = {
    "ground_truth.hot_resident_fraction": ("ground_truth.hot_pages", "no hot pages"),
    "ground_truth.cold_resident_fraction": ("ground_truth.cold_pages", "no cold pages"),
    "ground_truth.evicted_cold_fraction": ("ground_truth.evicted_pages", "no page was evicted"),
    "aging.lockless_share": ("aging.calls", "no aging calls"),
    "fallback.rmap_share": ("aging.calls", "no aging calls"),
    "fallback.tdp_share": ("aging.calls", "no aging calls"),
    "aging.test_clear_young.pages_per_call": ("aging.test_clear_young.calls", "no hook requests"),
}


def empty_set(report: Report, key: str) -> str | None:
    """'n/a: no page was evicted' when a null share's set is empty, else None."""
    if key not in EMPTY_SETS or get_figure(report, key) is not None:
        return None
    count_key, what = EMPTY_SETS[key]
    return f"n/a: {what}" if get_figure(report, count_key) == 0 else None


def null_text(report: Report, key: str) -> str:
    """What to print for a null figure: n/a for an empty set, the recorded reason, or why unmeasured."""
    na = empty_set(report, key)
    if na:
        return na
    reason = report.reason_for(key)
    parts = key.split(".")
    if any(".".join(parts[:n]) in report.probes.not_observable for n in range(len(parts), 0, -1)):
        return f"not observable here: {reason}"
    return f"not measured: {reason}"


def figure_text(report: Report, key: str, unit: Unit) -> tuple[str, bool]:
    """(text, is_null) of one figure."""
    value = get_figure(report, key)
    return (fmt_value(value, unit), False) if value is not None else (null_text(report, key), True)


# ---------------------------------------------------------------------------
# Histogram names as the experiment records them: "lock wait ns (vm)", "kvm_age_gfn latency ns",
# "aging_latency_ns:kvm_age_hva"


_UNIT_WORDS = {"ns": "nsecs", "nsecs": "nsecs", "us": "usecs", "usecs": "usecs", "pages": "pages", "bytes": "bytes"}
_WAITERS = {"vm": "vCPU threads of this VM", "vcpu": "vCPU threads of this VM",
            "ager": "aging tasks (our ager, kswapd, kdamond)", "other": "all other tasks"}


def hist_unit_label(name: str) -> str:
    """BCC's label for the histogram's unit, a word of its name: 'lock wait ns (vm)' -> 'nsecs'."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in _UNIT_WORDS:
            return _UNIT_WORDS[word]
    return "value"


@dataclass(frozen=True)
class HistName:
    title: str  # what the histogram covers, in words
    axis: str  # what one sample is: "lock wait", "latency", or the unit word
    is_time: bool  # samples are nanoseconds, shown in ns/us/ms


def hist_name(name: str) -> HistName:
    """Say what a recorded histogram covers: every lock or only this VM's mmu_lock, and whose waits."""
    is_time = hist_unit_label(name) == "nsecs"
    lowered = name.lower()
    words = [w for w in re.split(r"[^a-z0-9_]+", lowered) if w]
    who = next((_WAITERS[w] for w in reversed(words) if w in _WAITERS), None)
    if "mmu_lock" in lowered:
        return HistName("Lock wait, this VM's mmu_lock only" + (f": {who}" if who else ""), "lock wait", is_time)
    if "lock" in words and "wait" in words:
        return HistName("Lock wait, all locks" + (f": {who}" if who else ""), "lock wait", is_time)
    if "latency" in lowered:
        func = next((w for w in words if w not in ("latency", "ns", "us", "latency_ns", "aging_latency_ns")), None)
        return HistName(f"Latency of {func}, entry to return" if func else "Latency", "latency", is_time)
    return HistName(name, hist_unit_label(name), is_time)
