"""Scoring the host's decisions against what the guest really touched.

Pure functions over boolean page masks (index = 4 KiB data page, memslots
concatenated), so every score is unit-testable and cross-checkable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ResidencyScore:
    hot_pages: int
    cold_pages: int
    hot_resident_fraction: float | None
    cold_resident_fraction: float | None
    evicted_pages: int
    evicted_hot: int
    evicted_cold: int

    @property
    def evicted_cold_fraction(self) -> float | None:
        return self.evicted_cold / self.evicted_pages if self.evicted_pages else None


def residency_score(resident_before: np.ndarray, resident_after: np.ndarray, hot: np.ndarray) -> ResidencyScore:
    """How a reclaim pass treated hot (recently touched) and cold pages.

    ``hot`` is the set the guest touched since the previous pass; a page is
    evicted when it was resident before the pass and is not after it.
    """
    hot = hot.astype(bool)
    cold = ~hot
    evicted = resident_before & ~resident_after
    n_hot, n_cold = int(hot.sum()), int(cold.sum())
    return ResidencyScore(
        hot_pages=n_hot,
        cold_pages=n_cold,
        hot_resident_fraction=float(resident_after[hot].mean()) if n_hot else None,
        cold_resident_fraction=float(resident_after[cold].mean()) if n_cold else None,
        evicted_pages=int(evicted.sum()),
        evicted_hot=int((evicted & hot).sum()),
        evicted_cold=int((evicted & cold).sum()),
    )


@dataclass
class YoungScore:
    """An ager's per-page young/idle verdicts against the touched set."""

    observed: int
    predicted_young: int
    touched: int
    true_young: int
    precision: float | None
    recall: float | None


def young_score(idle: np.ndarray, observed: np.ndarray | None, touched: np.ndarray) -> YoungScore:
    """Precision and recall of "young" (= not idle) over the observed pages."""
    seen = np.ones_like(idle, dtype=bool) if observed is None else observed.astype(bool)
    young = ~idle.astype(bool) & seen
    truth = touched.astype(bool) & seen
    tp = int((young & truth).sum())
    n_young, n_truth = int(young.sum()), int(truth.sum())
    return YoungScore(int(seen.sum()), n_young, n_truth, tp,
                      tp / n_young if n_young else None, tp / n_truth if n_truth else None)


@dataclass
class HarvestScore:
    """What aging cleared against what it should have found young, over the gfns one pass aged."""

    expected: int  # aged while mapped and touched since that gfn's previous harvest
    observed: int  # accessed bit cleared by aging
    agreed: int
    disagreeing: np.ndarray  # page indexes where the two differ

    @property
    def precision(self) -> float | None:
        return self.agreed / self.observed if self.observed else None

    @property
    def recall(self) -> float | None:
        return self.agreed / self.expected if self.expected else None


class HarvestTracker:
    """Expected young per gfn, pass by pass, from the guest's touches and the harvest flags the probes kept.

    A gfn is expected young when a pass aged it while KVM mapped it and the
    guest touched it since the last pass that aged it while mapped (the last
    harvest that could have cleared its accessed bit). A mapping created since
    then is itself accessed: KVM creates SPTEs accessed, on a fault the touch
    caused. Flags are HarvestFlag bits per page (kvmctl.trace.records).
    """

    def __init__(self, pages: int):
        self.touched_since = np.zeros(pages, dtype=bool)
        self.touches: list[np.ndarray] = []  # per pass: touched before it (for the history)
        self.flags: list[np.ndarray] = []  # per pass

    def touched(self, mask: np.ndarray) -> None:
        self.touched_since |= mask.astype(bool)

    def score(self, flags: np.ndarray, aged_mapped: int, cleared: int) -> HarvestScore:
        """Score one pass; ``aged_mapped``/``cleared`` are the HarvestFlag bits (passed in to keep this pure)."""
        n = min(len(flags), len(self.touched_since))
        flags, touched = flags[:n], self.touched_since[:n]
        was_aged = (flags & aged_mapped) != 0
        expected = was_aged & touched
        observed = (flags & cleared) != 0
        self.touches.append(touched.copy())
        self.flags.append(flags.copy())
        self.touched_since[:n][was_aged] = False
        return HarvestScore(int(expected.sum()), int(observed.sum()), int((expected & observed).sum()),
                            np.flatnonzero(expected != observed))

    def history(self, index: int, letters: dict[int, str]) -> str:
        """One gfn's passes so far: 'p0: aged; p1: touched, mapped, aged+mapped, cleared' style."""
        parts = []
        for p, (flags, touched) in enumerate(zip(self.flags, self.touches)):
            f = int(flags[index])
            words = (["touched"] if touched[index] else []) + [w for bit, w in letters.items() if f & bit]
            parts.append(f"p{p}: {', '.join(words) or '-'}")
        return "; ".join(parts)


def hot_refaults(resident_before_phase: np.ndarray, hot: np.ndarray) -> int:
    """Re-faults of the current hot set: hot pages that were not resident when the phase began.

    Every page was resident after populating, so each of these had been evicted and the
    guest had to fault it back in (a read from the backing file).
    """
    return int((hot.astype(bool) & ~resident_before_phase).sum())


# A moved working set counts as adapted to once at most this share of the pages that went cold is resident.
ADAPTED_RESIDENT_SHARE = 0.01


@dataclass
class ShiftScore:
    """The hot set moved at pass ``pass_no``: how long the host kept the pages that went cold."""

    pass_no: int
    moved_pages: int  # hot now, not hot in the previous pass
    cooled_pages: int  # hot in the previous pass, not any more
    passes_to_adapt: int | None = None  # passes until at most 1 % of the cooled pages were resident; None: not yet
    cooled_resident_fraction: list[float] = field(default_factory=list)  # after each pass from the shift on


class ShiftTracker:
    """Follows every move of the hot set, pass by pass, until the pages that went cold are evicted.

    ``observe`` takes each pass's hot set and the residency after it. A pass whose hot set
    differs from the previous pass's is a shift; from that pass on, the share of the pages
    that went cold and are still resident shows how fast the host noticed.
    """

    def __init__(self) -> None:
        self.shifts: list[ShiftScore] = []
        self._open: list[tuple[ShiftScore, np.ndarray]] = []
        self._prev_hot: np.ndarray | None = None

    def observe(self, pass_no: int, hot: np.ndarray, resident_after: np.ndarray) -> None:
        hot = hot.astype(bool)
        prev, self._prev_hot = self._prev_hot, hot
        if prev is not None and not np.array_equal(prev, hot):
            cooled = prev & ~hot
            shift = ShiftScore(pass_no, int((hot & ~prev).sum()), int(cooled.sum()))
            self.shifts.append(shift)
            if cooled.any():
                self._open.append((shift, cooled))
            else:  # the hot set only grew: nothing to notice
                shift.passes_to_adapt = 0
        still = []
        for shift, cooled in self._open:
            cooled &= ~hot  # a page hot again is not cold any more
            share = float(resident_after[cooled].mean()) if cooled.any() else 0.0
            shift.cooled_resident_fraction.append(share)
            if share <= ADAPTED_RESIDENT_SHARE:
                shift.passes_to_adapt = len(shift.cooled_resident_fraction)
            else:
                still.append((shift, cooled))
        self._open = still
