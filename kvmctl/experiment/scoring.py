"""Scoring the host's decisions against what the guest really touched.

Pure functions over boolean page masks (index = 4 KiB data page, memslots
concatenated), so every score is unit-testable and cross-checkable.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def refaults(evicted: np.ndarray, touched_after: np.ndarray) -> int:
    """Evicted pages the guest touched again afterwards (each must fault back in)."""
    return int((evicted & touched_after).sum())


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
