"""`kvmctl report show`: golden text, 80 columns, BCC/perf formats."""

from __future__ import annotations

import contextlib
import io

import pytest

from kvmctl.trace.hist import log2_buckets
from kvmctl.report.schema import Bucket, EpochRow, GuestFault, Report
from kvmctl.report.textual import WIDTH, contention_lines, fmt_ns, hist_unit_label, log2_hist_lines, render_text
from tests.helpers.reports import make_report, with_repeats


def _incomplete() -> Report:
    r = Report(created="2026-11-25T15:30:00+00:00", command_line=["kvmctl", "experiment", "--repeat", "3"])
    r.incomplete_reason = "interrupted by SIGINT during pass 2"
    r.mark_not_observable("aging.bits_cleared", "no TDP MMU (shadow paging)")
    r.aging.calls, r.aging.pages = 1200, 3600
    r.notes.append("partial report: the experiment was interrupted")
    return r


CASES = {
    "report_show_shadow.txt": lambda: make_report(),
    "report_show_tdp_repeats.txt": lambda: with_repeats(make_report(tdp=True), 5, seed=3),
    "report_show_incomplete.txt": _incomplete,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, golden):
    golden(name, render_text(CASES[name]()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fits_80_columns(name):
    lines = render_text(CASES[name]()).splitlines()
    assert [line for line in lines if len(line) > WIDTH] == []


def test_null_figures_say_why():
    text = render_text(make_report())
    assert "accessed bits cleared          not observable here: no TDP MMU (shadow paging)" in text
    incomplete = render_text(_incomplete())
    assert "INCOMPLETE: interrupted by SIGINT during pass 2" in incomplete
    assert "not measured: the run was cut short first" in incomplete
    assert "1,200" in incomplete  # what was measured before the cut is still shown


def test_tdp_report_shows_bits_cleared():
    r = make_report(tdp=True)
    assert f"{r.aging.bits_cleared:,}" in render_text(r)


def test_log2_hist_matches_bcc():
    """Our histogram is byte-identical to BCC's own print_log2_hist."""
    bcc_table = pytest.importorskip("bcc.table", reason="python3-bpfcc (BCC) is not installed")
    for slots in ([0, 3, 0, 5, 1, 40, 17], [0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 340, 2210, 1830, 410, 35, 4, 1],
                  [0] * 40 + [7, 9]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            bcc_table._print_log2_hist(slots, "nsecs", None)
        ours = log2_hist_lines(log2_buckets(slots, dense=True), "nsecs")
        assert "\n".join(ours) + "\n" == out.getvalue()


def test_log2_hist_empty():
    assert log2_hist_lines([Bucket(0, 1, 0)], "nsecs") == ["     (no samples)"]


def test_perf_time_format_and_order():
    assert fmt_ns(983) == "983 ns"
    assert fmt_ns(714_736) == "714.74 us"
    assert fmt_ns(13_580_000) == "13.58 ms"
    assert fmt_ns(2_500_000_000) == "2.50 s"
    lines = contention_lines(make_report().contention.rows)
    assert lines[0].split() == ["contended", "total", "wait", "max", "wait", "avg", "wait", "type", "caller"]
    assert lines[2].split()[0] == "19"  # largest total wait first, like perf
    assert "rwlock:W*" in lines[3]


@pytest.mark.parametrize(
    "name, label",
    [("aging_latency_ns:kvm_age_hva", "nsecs"), ("lock wait ns (vcpu)", "nsecs"), ("kvm_age_gfn latency ns", "nsecs"),
     ("scan_us", "usecs"), ("range pages", "pages"), ("young results", "value")],
)
def test_hist_unit_from_name(name, label):
    assert hist_unit_label(name) == label


def test_epoch_rows_for_all_vcpus():
    r = make_report()
    r.epochs = [EpochRow(3, -1, "hotcold:0.25 x40", 1_802_240, 7.5, 7.6, 1, 2)]
    text = render_text(r)
    assert "    3   all hotcold:0.25 x40" in text


def test_guest_fault_shows_registers():
    r = _incomplete()
    r.guest_fault = GuestFault("triple fault (KVM_EXIT_SHUTDOWN) in epoch 2", {"rip": 0x401000, "rsp": 0x7FF000})
    text = render_text(r)
    assert "fault       triple fault (KVM_EXIT_SHUTDOWN) in epoch 2" in text
    assert "rip=0x401000 rsp=0x7ff000" in text


def test_long_tables_are_elided_at_both_ends():
    r = make_report(passes=30, epochs=40)
    text = render_text(r)
    assert "... 18 passes omitted" in text and "... 28 epochs omitted" in text
    assert "\n  30 memcg" in text and "\n   39     2 hotcold" in text  # the last rows stay visible
    assert all(len(line) <= WIDTH for line in text.splitlines())
