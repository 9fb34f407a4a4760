"""The live table of `kvmctl watch` fits an 80-column terminal without cutting a figure."""

from __future__ import annotations

from rich.console import Console

from kvmctl.report.schema import PassiveSample
from kvmctl.watch.live import LiveView, short_count, short_size
from kvmctl.watch.runner import LiveRow


def test_short_counts_take_at_most_five_characters():
    assert [short_count(n) for n in (None, 0, 987, 12_345, 456_789, 7_800_000, 123_456_789_012)] == \
        ["-", "0", "987", "12.3K", "457K", "7.8M", "123G"]
    assert [short_size(n) for n in (None, 0, 526_660 << 10, 3 << 29)] == ["-", "0", "514M", "1.5G"]


def test_the_table_fits_80_columns():
    view = LiveView("kvmctl watch --pid 4194304")
    for i in range(1, 15):
        sample = PassiveSample(i * 10**9, 512 << 20, 300 << 20, 131_072, 0, 123_456)
        view.rows.append(LiveRow(i, 118_272, 118_272, {"kdamond": 110_080, "other": 8_192}, 0, sample,
                                 i * 118_272))
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(view._table())
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "118K" in text and "512M" in text and "1,655,808 aging calls so far" in text
    assert len([ln for ln in text.splitlines() if ln.strip().startswith(("13 ", "14 "))]) == 2  # newest rows kept
