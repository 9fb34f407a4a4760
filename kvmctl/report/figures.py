"""Which report figures matter: the required ones, the headline, and dotted access to them.

A figure is a dotted path into the report (``"ground_truth.refaults"``);
the functions here walk any report tree by it, so the schema can use them.
Required figures are in every report, null with a reason when unknown; the
headline is what ``report show`` leads with, ``report diff`` compares and
``--repeat`` records. A new headline figure is one line in its section of ``HEADLINE``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# Figures other tools rely on: present in every report, null + reason when unknown.
REQUIRED_FIGURES: tuple[str, ...] = (
    "host.mmu",
    "aging.calls",
    "aging.pages",
    "aging.background_calls",
    "aging.bits_cleared",
    "ground_truth.hot_resident_fraction",
    "ground_truth.evicted_cold_fraction",
    "ground_truth.refaults",
    "contention.mmu_lock_wait_ns",
    "fallback.verdict",
    "fallback.rmap_share",
    "lost_events",
    "trace_window.start_ns",
    "trace_window.end_ns",
)


class Unit(enum.Enum):
    COUNT = "count"
    FRACTION = "fraction"
    NS = "ns"


@dataclass(frozen=True)
class Figure:
    key: str  # dotted path into the report
    label: str
    unit: Unit
    lower_is_better: bool | None = None  # None: neither direction is "better"


# The headline, by report section: what `report show` leads with, `report diff`
# compares and repeats record, in this order.
_AGING = (
    Figure("aging.calls", "aging calls, all tasks", Unit.COUNT),
    Figure("aging.ours_calls", "aging calls, our ager", Unit.COUNT),
    Figure("aging.background_calls", "aging calls, background", Unit.COUNT),
    Figure("aging.pages", "pages aged, all tasks", Unit.COUNT),
    Figure("aging.bits_cleared", "accessed bits cleared", Unit.COUNT),
)
_GROUND_TRUTH = (
    Figure("ground_truth.hot_resident_fraction", "hot pages resident", Unit.FRACTION, False),
    Figure("ground_truth.evicted_cold_fraction", "evicted pages that were cold", Unit.FRACTION, False),
    Figure("ground_truth.refaults", "re-faults of evicted pages", Unit.COUNT, True),
    Figure("ground_truth.passes_to_adapt", "passes to evict old hot set", Unit.COUNT, True),
    Figure("ground_truth.precision", "young/idle precision", Unit.FRACTION, False),
    Figure("ground_truth.recall", "young/idle recall", Unit.FRACTION, False),
)
_LOCKS_AND_HOOK = (
    Figure("contention.mmu_lock_wait_ns", "mmu_lock wait", Unit.NS, True),
    Figure("aging.lockless_share", "lockless aging share", Unit.FRACTION),
    Figure("aging.test_clear_young.cleared", "bits cleared by the hook", Unit.COUNT),
    Figure("contention.aging_mmu_lock_acquisitions", "mmu_lock taken by aging", Unit.COUNT, True),
    Figure("contention.vcpu_wait_behind_aging_ns", "vCPU wait behind aging", Unit.NS, True),
)
_HARVEST = (
    Figure("aging.harvest.precision", "harvest precision", Unit.FRACTION, False),
    Figure("aging.harvest.recall", "harvest recall", Unit.FRACTION, False),
    Figure("aging.pass_cost.ns_per_page", "aging pass cost per page", Unit.NS, True),
)
_FALLBACK_AND_LOSS = (
    Figure("fallback.rmap_share", "aging calls on the rmap path", Unit.FRACTION),
    Figure("lost_events", "lost events", Unit.COUNT, True),
)
HEADLINE: tuple[Figure, ...] = _AGING + _GROUND_TRUTH + _LOCKS_AND_HOOK + _HARVEST + _FALLBACK_AND_LOSS


def get_figure(report: Any, key: str) -> Any:
    obj: Any = report
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj.value if isinstance(obj, enum.Enum) else obj


def set_figure(report: Any, key: str, value: Any) -> None:
    *path, last = key.split(".")
    obj: Any = report
    for part in path:
        obj = getattr(obj, part)
    if not hasattr(obj, last):
        raise AttributeError(f"report has no figure {key!r}")
    setattr(obj, last, value)


def headline_figures(report: Any) -> dict[str, float | None]:
    """The headline as plain numbers: one entry of ``Report.repeats``."""
    out: dict[str, float | None] = {}
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        out[fig.key] = None if value is None else float(value)
    return out
