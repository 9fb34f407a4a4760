"""A watch report (a VM kvmctl did not create) loads again and every renderer shows it."""

from __future__ import annotations

from kvmctl.report.chrome import chrome_trace
from kvmctl.report.diff import render_diff
from kvmctl.report.files import load_report, write_report
from kvmctl.report.html import plots, render_html
from kvmctl.report.schema import ReportKind
from kvmctl.report.textual import render_text
from tests.helpers.reports import make_report, make_watch_report


def test_watch_report_round_trips(tmp_path):
    report = make_watch_report()
    back = load_report(write_report(report, tmp_path / "w.json"))
    assert back.report_kind is ReportKind.WATCH
    assert back.target == report.target
    assert back.memslots[0].slot is None and back.memslots[0].source == "qmp"
    assert back.heatmaps[0].touched is None and sum(back.heatmaps[0].resident) == back.heatmaps[0].pages // 2
    assert back.passive == report.passive
    assert not back.unexplained_nulls()


def test_an_experiment_report_without_the_new_keys_still_loads(tmp_path):
    data = make_report().to_dict()
    for key in ("report_kind", "target", "passive", "memcg_stats"):
        del data[key]
    for m in data["memslots"]:
        del m["source"]
    import json

    (tmp_path / "old.json").write_text(json.dumps(data))
    old = load_report(tmp_path / "old.json")
    assert old.report_kind is ReportKind.EXPERIMENT and old.memslots[0].source == "kvm"


def test_text_names_the_watched_process_and_its_ranges():
    text = render_text(make_watch_report())
    assert text.startswith("== kvmctl watch report")
    assert "-- Watched process" in text and "4711 (qemu-system-x86)" in text and "0:4730, 1:-" in text
    assert "ambiguous   0 events" in text
    assert "   -  0x0                 0x7fedc3fff000         512M  file (qmp) /var/tmp/qem.." in text


def test_html_draws_the_range_heat_map_with_resident_and_referenced_strips():
    report = make_watch_report()
    heat = [p for p in plots(report) if p.plot_id.startswith("heatmap-")]
    assert len(heat) == 1 and heat[0].svg is not None
    assert "resident" in heat[0].svg and "referenced" in heat[0].svg and "touched" not in heat[0].svg
    assert "kvmctl watch report" in render_html(report)


def test_trace_and_diff_take_a_watch_report():
    report = make_watch_report()
    trace = chrome_trace(report)
    assert trace["otherData"]["report_kind"] == "watch"
    assert any(e["ph"] == "C" for e in trace["traceEvents"])
    assert "aging calls" in render_diff([("a.json", report), ("b.json", make_watch_report())])
