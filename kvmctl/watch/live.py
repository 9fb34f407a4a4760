"""The live view of a watch: one table, refreshed each interval, like top or kvm_stat.

Twelve columns fit an 80-column terminal only with short numbers: counts
are shown as 110K / 1.2M, sizes as 232M; the report keeps the exact figures.
"""

from __future__ import annotations

from collections import deque

from kvmctl.vocab import TaskClass
from kvmctl.watch.runner import LiveRow

ROWS = 12  # intervals shown, newest last
CLASSES = [c for c in TaskClass if c is not TaskClass.OURS]  # kvmctl ages nothing in a watch


def _short(n: int | None, scales: tuple[tuple[str, float], ...]) -> str:
    if n is None:
        return "-"
    for unit, scale in scales:
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return str(n)


def short_count(n: int | None) -> str:
    """A count in at most 5 characters: 987, 12.3K, 456K, 7.8M."""
    return _short(n, (("G", 1e9), ("M", 1e6), ("K", 1e3)))


def short_size(n: int | None) -> str:
    """Bytes in at most 5 characters, binary units: 514M, 1.5G."""
    return _short(n, (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)))


class LiveView:
    """A rich Live table on stderr; use as a context manager and pass ``update`` to the watch."""

    def __init__(self, title: str):
        from rich.console import Console  # noqa: PLC0415 - only interactive runs draw
        from rich.live import Live  # noqa: PLC0415

        self.title = title
        self.rows: deque[LiveRow] = deque(maxlen=ROWS)
        self._live = Live(self._table(), console=Console(stderr=True), auto_refresh=False, transient=False)

    def __enter__(self) -> LiveView:
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()

    def update(self, row: LiveRow) -> None:
        self.rows.append(row)
        self._live.update(self._table(), refresh=True)

    def _table(self):
        from rich import box  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415

        last = self.rows[-1] if self.rows else None
        title = f"{self.title}: {last.total_calls:,} aging calls so far" if last else f"{self.title}: starting"
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0),
                      caption="per interval: aging calls (and pages) on the VM's RAM, by who aged them; ambig: on "
                              "addresses another VM maps too. Rss, Ref'd (smaps; '-' between its spaced reads), pg4k "
                              "(KVM), refault (memcg): at the interval's end", caption_justify="left")
        for name in ("t s", "calls", "pages", *[c.value for c in CLASSES], "ambig", "Rss", "Ref'd", "pg4k",
                     "refault"):
            table.add_column(name, justify="right", no_wrap=True)
        for r in self.rows:
            s = r.sample
            table.add_row(f"{r.t_s:.0f}", short_count(r.calls), short_count(r.pages),
                          *[short_count(r.by_class.get(c.value, 0)) for c in CLASSES], short_count(r.ambiguous),
                          short_size(s.rss_bytes), short_size(s.referenced_bytes), short_count(s.pages_4k),
                          short_count(s.workingset_refault))
        return table
