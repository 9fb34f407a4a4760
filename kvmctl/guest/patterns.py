"""Touch patterns and the ground truth: exactly which pages an epoch touches.

The ``touch`` payload (guests/touch.S) decides what to touch from its
mailbox fields alone; this module computes the same thing with numpy, so for
any run the host knows the touched set of every vCPU in every epoch without
looking at the guest. tests/kvm/test_ground_truth.py proves the two agree by
reading back the epoch stamps the guest wrote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kvmctl.errors import UsageError
from kvmctl.guest.mailbox import PatternCode

GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1
_U = np.uint64
PATTERN_HELP = "seq, stride:N, random[:DRAW_FRACTION], hotcold:HOT_FRACTION[:COLD_EVERY], moving:HOT_FRACTION[:EVERY]"


def splitmix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def random_key(seed: int, vcpu: int, epoch: int) -> int:
    """The per-vCPU, per-epoch key the host gives the payload."""
    return splitmix64(splitmix64(splitmix64(seed + GOLDEN) + vcpu) + epoch)


@dataclass(frozen=True)
class Pattern:
    kind: PatternCode
    stride: int = 1
    hot_fraction: float = 0.0
    cold_every: int = 0
    draw_fraction: float = 1.0
    shift_every: int = 0  # moving: the hot window moves on every this many epochs

    @classmethod
    def parse(cls, text: str) -> "Pattern":
        name, _, rest = text.strip().partition(":")
        args = rest.split(":") if rest else []
        try:
            if name == "seq" and not args:
                return cls(PatternCode.SEQ)
            if name == "stride" and len(args) == 1:
                stride = int(args[0])
                if stride < 1:
                    raise ValueError
                return cls(PatternCode.STRIDE, stride=stride)
            if name == "random" and len(args) <= 1:
                frac = float(args[0]) if args else 1.0
                if not 0 < frac <= 64:
                    raise ValueError
                return cls(PatternCode.RANDOM, draw_fraction=frac)
            if name == "hotcold" and 1 <= len(args) <= 2:
                hot = float(args[0])
                cold_every = int(args[1]) if len(args) == 2 else 0
                if not 0 <= hot <= 1 or cold_every < 0 or math.isnan(hot):
                    raise ValueError
                return cls(PatternCode.HOTCOLD, hot_fraction=hot, cold_every=cold_every)
            if name == "moving" and 1 <= len(args) <= 2:
                hot = float(args[0])
                every = int(args[1]) if len(args) == 2 else 1
                if not 0 < hot <= 1 or every < 1:
                    raise ValueError
                return cls(PatternCode.MOVING, hot_fraction=hot, shift_every=every)
        except ValueError:
            pass
        raise UsageError(f"bad pattern {text!r}", f"use {PATTERN_HELP} (fractions 0..1, N >= 1)")

    def __str__(self) -> str:
        if self.kind is PatternCode.SEQ:
            return "seq"
        if self.kind is PatternCode.STRIDE:
            return f"stride:{self.stride}"
        if self.kind is PatternCode.RANDOM:
            return "random" if self.draw_fraction == 1.0 else f"random:{self.draw_fraction:g}"
        if self.kind is PatternCode.MOVING:
            return f"moving:{self.hot_fraction:g}:{self.shift_every}"
        return f"hotcold:{self.hot_fraction:g}" + (f":{self.cold_every}" if self.cold_every else "")

    def hot_pages(self, pages: int) -> int:
        if self.kind in (PatternCode.HOTCOLD, PatternCode.MOVING):
            return min(pages, round(self.hot_fraction * pages))
        return pages

    @property
    def varies(self) -> bool:
        """Whether the touched set differs from epoch to epoch."""
        return self.kind in (PatternCode.RANDOM, PatternCode.MOVING) or bool(self.cold_every)

    def window(self, epoch: int) -> int:
        """moving: which window the hot set is in at ``epoch`` (it moves on by its own size)."""
        return epoch // self.shift_every if self.kind is PatternCode.MOVING else 0

    def window_start(self, pages: int, epoch: int) -> int:
        """moving: the first page of the hot window; the window wraps around the region's end."""
        return (self.window(epoch) % pages) * self.hot_pages(pages) % pages if pages else 0

    def draws(self, pages: int) -> int:
        return max(1, round(self.draw_fraction * pages)) if self.kind is PatternCode.RANDOM else 0

    def cold_touched(self, epoch: int) -> bool:
        return self.cold_every != 0 and epoch % self.cold_every == 0

    def touch_sequence(self, pages: int, epoch: int, key: int) -> np.ndarray:
        """Page indices (within the region) in the order the guest touches them."""
        if self.kind is PatternCode.SEQ:
            return np.arange(pages, dtype=np.int64)
        if self.kind is PatternCode.STRIDE:
            return np.arange(0, pages, self.stride, dtype=np.int64)
        if self.kind is PatternCode.HOTCOLD:
            end = pages if self.cold_touched(epoch) else self.hot_pages(pages)
            return np.arange(end, dtype=np.int64)
        if self.kind is PatternCode.MOVING:
            return (self.window_start(pages, epoch) + np.arange(self.hot_pages(pages), dtype=np.int64)) % pages
        d = self.draws(pages)
        with np.errstate(over="ignore"):
            z = _U(key) + np.arange(1, d + 1, dtype=_U) * _U(GOLDEN)
            z = (z ^ (z >> _U(30))) * _U(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> _U(27))) * _U(0x94D049BB133111EB)
            z = z ^ (z >> _U(31))
            return (((z >> _U(32)) * _U(pages)) >> _U(32)).astype(np.int64)

    def touched(self, pages: int, epoch: int, key: int) -> np.ndarray:
        """Boolean mask over the region: touched at least once this epoch."""
        mask = np.zeros(pages, dtype=bool)
        mask[self.touch_sequence(pages, epoch, key)] = True
        return mask

    def touch_count(self, pages: int, epoch: int, key: int) -> int:
        """Touches the guest makes (counts repeats of random draws)."""
        if self.kind is PatternCode.RANDOM:
            return self.draws(pages)
        return len(self.touch_sequence(pages, epoch, key))


@dataclass(frozen=True)
class Region:
    """A vCPU's share of the data area, in 4 KiB pages from its start."""

    first_page: int
    pages: int


def partition(total_pages: int, vcpus: int, shared: bool) -> list[Region]:
    if shared:
        return [Region(0, total_pages) for _ in range(vcpus)]
    if total_pages < vcpus:
        raise UsageError(f"{total_pages} pages cannot be split among {vcpus} vCPUs", "use more memory or --share")
    bounds = [total_pages * i // vcpus for i in range(vcpus + 1)]
    return [Region(bounds[i], bounds[i + 1] - bounds[i]) for i in range(vcpus)]


def epoch_touched(pattern: Pattern, regions: list[Region], total_pages: int, epoch: int, seed: int) -> np.ndarray:
    """Ground truth for one epoch: which pages of the whole data area any vCPU touched."""
    mask = np.zeros(total_pages, dtype=bool)
    for i, r in enumerate(regions):
        seq = pattern.touch_sequence(r.pages, epoch, random_key(seed, i, epoch))
        mask[r.first_page + seq] = True
    return mask
