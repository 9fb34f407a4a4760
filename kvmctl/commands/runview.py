"""What `kvmctl run` shows while it runs: the epoch rows, the totals, and progress on stderr."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from kvmctl.guest.machine import EpochResult, MachineSpec
from kvmctl.units import format_size

PLAIN_EVERY_S = 2.0  # a plain progress line at most this often (stderr not a terminal)


@dataclass(frozen=True)
class Limits:
    """When a run ends: after ``epochs`` epochs or once ``duration`` seconds have passed, whichever comes first."""

    epochs: int | None
    duration: float | None

    def done(self, epochs: int, elapsed: float) -> bool:
        if self.epochs is not None and epochs >= self.epochs:
            return True
        return self.duration is not None and epochs > 0 and elapsed >= self.duration  # at least one epoch

    def remaining(self, epochs: int, elapsed: float) -> float | None:
        """Seconds left: the rest of the duration, or the epochs left at the mean epoch time so far; the sooner."""
        left = []
        if self.duration is not None:
            left.append(max(0.0, self.duration - elapsed))
        if self.epochs is not None and epochs:
            left.append(elapsed / epochs * (self.epochs - epochs))
        return min(left) if left else None

    def fraction(self, epochs: int, elapsed: float) -> float:
        parts = [min(1.0, elapsed / self.duration)] if self.duration else []
        if self.epochs:
            parts.append(epochs / self.epochs)
        return max(parts, default=0.0)


def _secs(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s) // 60} min {int(s) % 60:02d} s"


def progress_text(limits: Limits, epochs: int, elapsed: float) -> str:
    """'12 epochs, 2.0 s elapsed, 3.0 s left' (the plain line, and the bar's text)."""
    left = limits.remaining(epochs, elapsed)
    text = f"{epochs} epoch{'s' if epochs != 1 else ''}, {_secs(elapsed)} elapsed"
    return text + ("" if left is None else f", {_secs(left)} left")


class RunProgress:
    """Progress on ``stream``: a rich bar with the time left on a terminal, a plain line every
    PLAIN_EVERY_S seconds otherwise, nothing when ``stream`` is None."""

    def __init__(self, stream: TextIO | None, limits: Limits):
        self.stream, self.limits = stream, limits
        self.bar = None
        self.last_line = time.monotonic()

    def __enter__(self) -> RunProgress:
        if self.stream is not None and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            # Rows printed to a terminal stdout go above the bar; to a pipe they go straight on.
            self.bar = Progress(TextColumn("kvmctl run"), BarColumn(), TextColumn("{task.fields[text]}"),
                                console=Console(file=self.stream), transient=True,
                                redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
            self.bar.start()
            self.task = self.bar.add_task("run", total=1000, text=progress_text(self.limits, 0, 0.0))
        return self

    def update(self, epochs: int, elapsed: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=1000 * self.limits.fraction(epochs, elapsed),
                            text=progress_text(self.limits, epochs, elapsed))
        elif self.stream is not None and time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self.last_line = time.monotonic()
            print(f"kvmctl run: {progress_text(self.limits, epochs, elapsed)}", file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def head_line(spec: MachineSpec, pattern: str, write: bool) -> str:
    return (f"{spec.vcpus} vCPU(s), {format_size(spec.mem_bytes)} {spec.backing.value} in {spec.memslots} "
            f"memslot(s), pattern {pattern} ({'write' if write else 'read'})")


def epoch_header() -> str:
    return f"{'epoch':>5} {'pages':>12} {'distinct':>10} {'guest ms':>10} {'wall ms':>10} {'Mpages/s':>10}"


def epoch_row(r: EpochResult, distinct: int) -> str:
    rate = r.touches / r.guest_seconds / 1e6 if r.guest_seconds else 0
    return (f"{r.epoch:>5} {r.touches:>12} {distinct:>10} {r.guest_seconds * 1e3:>10.3f} "
            f"{r.wall_seconds * 1e3:>10.3f} {rate:>10.2f}")


def totals_lines(s: dict) -> list[str]:
    lines = []
    if not s["complete"]:
        lines.append(f"{s['incomplete_reason']}: the totals cover the {s['epochs']} epoch(s) above")
    rate = s["touch_rate_pages_per_s"] or 0
    steady = s["steady_touch_rate_pages_per_s"] or 0
    lines.append(f"total: {s['pages_touched']} touches ({s['distinct_pages_touched']} distinct pages) in "
                 f"{s['guest_seconds']:.3f} s guest / {s['wall_seconds']:.3f} s wall "
                 f"(setup {s['setup_seconds'] * 1e3:.1f} ms)")
    lines.append(f"rate: {rate / 1e6:.2f} M pages/s overall, {steady / 1e6:.2f} M pages/s after the first epoch")
    st = s["vm_stats"]
    keys = [k for k in ("pages_4k", "pages_2m", "pages_1g", "mmu_cache_miss", "mmu_shadow_zapped", "max_mmu_rmap_size")
            if k in st]
    lines.append("vm stats: " + ", ".join(f"{k}={st[k]}" for k in keys))
    return lines
