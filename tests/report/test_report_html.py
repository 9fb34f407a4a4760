"""`kvmctl report html`: self-contained page; plots carry the report's values;
a real headless Chromium renders every plot without console errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmctl.report import locks
from kvmctl.report.html import plots, render_html
from kvmctl.report.schema import AgingSample, PassResult, Report, Shift
from kvmctl.report.hist import time_buckets
from tests.helpers.pages import chromium, parse, run_chromium
from tests.helpers.reports import make_report, with_repeats

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "artifacts"
EXPECTED_PLOTS = {"aging-calls", "aging-pages", "aging-background", "residency", "refaults", "hist-0",
                  "contention", "heatmap-0"}


def _ys(fig: dict, series: str | None = None, attr: str = "data-y") -> list[float]:
    return [float(m[attr]) for m in fig["marks"] if series is None or m.get("data-row", series) == series]


def test_plots_carry_the_reports_values():
    r = make_report()
    figs = parse(render_html(r)).figures
    assert set(figs) == EXPECTED_PLOTS
    s = r.aging.series
    assert _ys(figs["aging-calls"]) == [x.calls for x in s]
    assert _ys(figs["aging-pages"]) == [x.pages for x in s]
    assert _ys(figs["aging-background"]) == [x.calls - x.background_calls for x in s] + [x.background_calls for x in s]
    residency = _ys(figs["residency"])
    assert residency[: len(r.passes)] == pytest.approx([100 * p.hot_resident_fraction for p in r.passes])
    assert _ys(figs["refaults"]) == [p.refaults for p in r.passes]
    assert _ys(figs["hist-0"]) == [b.count for b in time_buckets(r.histograms["lock wait ns (vm)"])]
    assert sorted(_ys(figs["contention"])) == sorted(row.total_wait_ns for row in locks.by_caller(r.contention.rows))
    hm = r.heatmaps[0]
    heat = figs["heatmap-0"]["marks"]
    assert [int(m["data-value"]) for m in heat if m["data-row"] == "aged"] == hm.aged
    assert [int(m["data-value"]) for m in heat if m["data-row"] == "touched"] == hm.touched
    for fid, fig in figs.items():
        assert int(fig["attrs"]["data-expected-marks"]) == len(fig["marks"]) > 0, fid


def test_self_contained():
    page = render_html(make_report())
    parsed = parse(page)
    assert parsed.external == []
    # the only URL is the SVG namespace identifier, which is never fetched
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "@import" not in page and "url(" not in page


def test_empty_report_explains_each_missing_plot():
    r = Report(incomplete_reason="interrupted by SIGTERM during setup")
    r.mark_not_observable("contention.mmu_lock_wait_ns", "lock:contention_begin is not available")
    page = render_html(r)
    figs = parse(page).figures
    assert all(f["attrs"]["data-expected-marks"] == "0" for f in figs.values())
    assert "not observable here: lock:contention_begin is not available" in page
    assert "not measured: the run was cut short first" in page
    assert "INCOMPLETE: interrupted by SIGTERM during setup" in page
    said = re.findall(r'<p class="na empty">([^<]*)</p>', page)
    assert len(said) == len(figs) and all(t.startswith(("none", "not measured", "not observable")) for t in said), said


def test_untrusted_strings_are_escaped():
    r = make_report()
    r.notes.append("<script>alert(1)</script>")
    r.contention.rows[0].caller = "<img src=x onerror=alert(1)>"
    page = render_html(r)
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert parse(page).external == []


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["shadow", "tdp", "empty", "long"])
def test_renders_in_headless_chromium(tmp_path, variant):
    exe = chromium()
    report = {"shadow": make_report, "tdp": lambda: make_report(tdp=True), "empty": Report, "long": _long}[variant]()
    page = tmp_path / "report.html"
    page.write_text(render_html(report, title=variant))
    expected = {p.plot_id: ("1" if p.svg else "empty") for p in plots(report)}

    run = run_chromium(exe, page, tmp_path / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = parse(run.stdout)
    rendered = {fid: f["attrs"].get("data-rendered") for fid, f in dom.figures.items()}
    assert rendered == expected  # every plot checked itself after layout
    wide = {fid: f["attrs"].get("data-full-width") for fid, f in dom.figures.items() if expected[fid] == "1"}
    assert set(wide.values()) <= {"1"}, wide  # every drawn plot spans its card
    assert dom.body.get("data-plots-failed") == "0"
    assert dom.body.get("data-plots-rendered") == str(sum(v == "1" for v in expected.values()))
    assert dom.body.get("data-errors") == ""
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # no console.error, no uncaught exception

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report_html_{variant}.png"
    shot.unlink(missing_ok=True)
    run = run_chromium(exe, page, tmp_path / "profile2", "--hide-scrollbars", "--window-size=1050,4200",
                        f"--screenshot={shot}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_chromium_check_catches_a_broken_plot(tmp_path):
    """The in-page check is not a rubber stamp: a plot missing marks is flagged."""
    exe = chromium()
    page_text = render_html(make_report())
    broken = page_text.replace('id="plot-refaults" data-expected-marks="4"', 'id="plot-refaults" data-expected-marks="5"')
    assert broken != page_text
    page = tmp_path / "broken.html"
    page.write_text(broken)
    run = run_chromium(exe, page, tmp_path / "profile", "--dump-dom")
    dom = parse(run.stdout)
    assert dom.figures["refaults"]["attrs"]["data-rendered"] == "0"
    assert dom.body["data-plots-failed"] == "1"
    assert any("plot plot-refaults did not render" in line for line in run.stderr.splitlines())


def _long() -> Report:
    """A 10-minute run sampled every 100 ms."""
    r = make_report()
    r.aging.interval_ns = 100_000_000
    r.aging.series = [AgingSample(i * 100_000_000, 1000 + i % 97, 3000 + i % 89, 700, 2100) for i in range(6000)]
    return r


def test_long_series_are_lines_that_keep_their_values():
    r = _long()
    page = render_html(r)
    fig = parse(page).figures["aging-calls"]
    (line,) = fig["marks"]
    assert [int(v) for v in line["data-ys"].split(",")] == [s.calls for s in r.aging.series]
    assert len(page) < 1_000_000  # still a file one can mail


def _figure_html(page: str, plot_id: str) -> str:
    start = page.index(f'id="plot-{plot_id}"')
    return page[start:page.index("</figure>", start)]


def _table_after(page: str, heading: str) -> list[list[str]]:
    """The cells of the first table after an <h2> heading, header row first."""
    part = page[page.index(f"<h2>{heading}"):]
    part = part[: part.index("</table>")]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", part, re.S)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows]


def test_passes_tasks_and_epochs_are_tables_and_repeats_too():
    r = make_report()
    page = render_html(r)
    passes = _table_after(page, "Ager passes")
    assert passes[0][:4] == ["pass", "ager", "result", "window"] and "re-faults" in passes[0]
    rows = [row for row in passes[1:] if row[0].isdigit()]
    assert [int(row[0]) for row in rows] == [p.pass_no for p in r.passes]
    assert [row[passes[0].index("aging calls")] for row in rows] == [f"{p.aging_calls:,}" for p in r.passes]
    tasks = _table_after(page, "Aging by task")
    assert [row[0] for row in tasks[1:]] == [str(t.pid) for t in sorted(r.aging.by_task, key=lambda t: -t.calls)]
    assert len(_table_after(page, "Guest epochs")) > 1
    assert "<h2>Repeats" not in page
    reps = with_repeats(make_report(), 3, seed=3)
    table = _table_after(render_html(reps), "Repeats: 3 runs")
    assert table[0] == ["figure", "run 3 (this report)", "mean ± sd (3 runs)", "min – max"]
    assert table[1][0] == "aging calls, all tasks" and " ± " in table[1][2]


def test_a_pass_that_did_nothing_says_so_in_its_row():
    r = make_report()
    p = r.passes[1]
    p.aging_calls, p.evicted_pages = 0, 0
    p.result, p.result_reason = PassResult.DID_NOTHING, "nothing to reclaim: usage 290M is below the target 300M"
    r.notes.append(f"pass {p.pass_no}: the limit was already set")
    page = render_html(r)
    rows = _table_after(page, "Ager passes")
    (row,) = [x for x in rows if x[0] == str(p.pass_no)]
    assert row[2] == "did nothing"
    assert ("DID NOTHING: nothing to reclaim: usage 290M is below the target 300M; the limit was already set"
            in page)


def test_moves_of_the_hot_set_are_a_table():
    r = make_report()
    r.ground_truth.shifts = [Shift(2, 32_768, 32_768, 2, [0.5, 0.0]), Shift(3, 32_768, 32_768, None, [0.9])]
    rows = _table_after(render_html(r), "Moves of the hot set")
    assert rows[1][:4] == ["2", "32,768", "32,768", "2"] and rows[2][3] == "not within the run"


def test_pass_markers_on_every_time_axis():
    r = make_report()
    page = render_html(r)
    t0 = r.trace_window.start_ns
    for plot_id in ("aging-calls", "aging-pages", "aging-background"):
        bands = re.findall(r'class="band"[^>]*data-x0="([^"]+)" data-x1="([^"]+)"', _figure_html(page, plot_id))
        assert [float(x) for band in bands for x in band] == pytest.approx(
            [(t - t0) / 1e9 for p in r.passes for t in (p.start_ns, p.end_ns)], abs=1e-4), plot_id
        assert f">pass {r.passes[0].pass_no}<" in _figure_html(page, plot_id)


def test_empty_charts_say_none():
    r = make_report()
    for p in r.passes:
        p.refaults = 0
    page = render_html(r)
    fig = _figure_html(page, "refaults")
    assert "<svg" not in fig and "none: no evicted page was touched again in any pass" in fig
    r.histograms["lock wait ns (vm)"] = [b.__class__(b.low, b.high, 0) for b in r.histograms["lock wait ns (vm)"]]
    assert "none: no samples" in _figure_html(render_html(r), "hist-0")


def test_time_histograms_have_bucket_bounds_in_time_units():
    r = make_report()
    fig = _figure_html(render_html(r), "hist-0")
    ticks = re.findall(r'<text x="[^"]+" y="[^"]+" text-anchor="middle">([^<]+)</text>', fig)
    bounds = [t for t in ticks if t[0].isdigit()]
    assert bounds and all(re.fullmatch(r"[\d.]+ (ns|µs|ms|s)", t) for t in bounds if " " in t), ticks
    assert any("µs" in t or "ms" in t for t in bounds)
    assert "nsecs" not in fig and "Lock wait, all locks: vCPU threads of this VM" in fig


def test_heat_map_has_a_colour_scale_and_gpa_ranges():
    r = make_report()
    fig = _figure_html(render_html(r), "heatmap-0")
    hm, m = r.heatmaps[0], r.memslots[0]
    assert fig.count('class="scale"') == 2 * 8  # one scale per row
    assert f"{max(hm.aged):,} (max)" in fig and f"{max(hm.touched):,} (max)" in fig
    first = m.gpa_start + 4096 * (hm.pages // hm.bins) - 1
    assert f"aged, gpa {m.gpa_start:#x}-{first:#x} ({hm.pages // hm.bins:,} pages): {hm.aged[0]:,}" in fig
