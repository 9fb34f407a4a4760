"""`kvmctl report show`: golden text, 80 columns, BCC/perf formats."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from kvmctl.trace.hist import log2_buckets
from kvmctl.report.schema import Bucket, EpochRow, GuestFault, Report
from kvmctl.report.fmt import fmt_ns, hist_name, hist_unit_label
from kvmctl.report.hist import log2_hist_lines, time_buckets
from kvmctl.report.textual import WIDTH, contention_lines, render_text
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
    assert re.search(r"\naccessed bits cleared +not observable here: no TDP MMU \(shadow paging\)", text)
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


def test_an_empty_set_reads_n_a_not_unobservable():
    """No page was evicted: the share of evicted pages that were cold is n/a, not a probe's failure."""
    r = make_report()
    r.ground_truth.evicted_pages, r.ground_truth.evicted_cold_fraction = 0, None
    r.probes.not_observable["ground_truth.evicted_cold_fraction"] = "no page was evicted by any pass (nothing to score)"
    text = render_text(r)
    assert re.search(r"\nevicted pages that were cold +n/a: no page was evicted", text)
    assert "evicted cold     n/a: no page was evicted" in text
    r.ground_truth.evicted_pages = None  # unknown is not empty
    assert re.search(r"\nevicted pages that were cold +not observable here: no page was evicted", render_text(r))


@pytest.mark.parametrize("name", sorted(CASES))
def test_times_have_units_and_no_clock_readings(name):
    text = render_text(CASES[name]())
    assert "CLOCK_MONOTONIC" not in text
    assert re.findall(r"(?<![0-9a-fx])\d{7,}", text) == []  # a raw clock reading or nanosecond count (not an address)
    assert "nsecs" not in text  # time histograms show their bounds in ns/us/ms


def test_time_histogram_bounds_in_units():
    r = make_report(tdp=True)
    text = render_text(r)
    assert "-- Latency of kvm_age_gfn, entry to return ---" in text
    assert "   1.02 us -> 2.05 us    : 2210     |****************************************|" in text
    assert "    256 ns -> 512 ns     : 12       |" in text


@pytest.mark.parametrize("name, title", [
    ("lock wait ns (vm)", "Lock wait, all locks: vCPU threads of this VM"),
    ("lock wait ns (other)", "Lock wait, all locks: all other tasks"),
    ("mmu_lock_wait_ns:vcpu", "Lock wait, this VM's mmu_lock only: vCPU threads of this VM"),
    ("kvm_age_gfn latency ns", "Latency of kvm_age_gfn, entry to return"),
])
def test_histogram_titles_say_what_they_cover(name, title):
    assert hist_name(name).title == title


def test_time_buckets_fill_the_gaps_between_samples():
    buckets = [Bucket(1024, 2047, 3), Bucket(8192, 16383, 1)]
    assert time_buckets(buckets) == [Bucket(1024, 2047, 3), Bucket(2048, 4095, 0), Bucket(4096, 8191, 0),
                                     Bucket(8192, 16383, 1)]
    assert time_buckets([Bucket(0, 1, 0)]) == []


def test_contention_rows_merge_per_caller_with_a_legend_that_matches():
    r = make_report()
    lines = contention_lines(r.contention.rows)
    wake = [line for line in lines if "try_to_wake_up" in line]
    assert len(wake) == 1 and wake[0].split()[0] == "5"  # 3 waits of other tasks + 2 of an ager
    assert any(line.endswith("[other task, no stack]") for line in lines)  # no empty caller cell
    assert "* = this VM's mmu_lock" in lines[-1]
    for row in r.contention.rows:
        row.is_mmu_lock = False
    lines = contention_lines(r.contention.rows)
    assert not any("*" in line for line in lines)
    assert "no row is this VM's mmu_lock" in lines[-1]


def test_repeat_headline_names_its_run_and_the_spread():
    r = with_repeats(make_report(tdp=True), 3, seed=3)
    r.spec["repeat"] = 4  # interrupted after three runs
    text = render_text(r)
    assert "-- Headline: run 3 of 3 (of 4 asked), the run every section below shows" in text
    row = next(line for line in text.splitlines() if line.startswith("aging calls, all tasks "))
    values = [v for v in row.removeprefix("aging calls, all tasks").split("  ") if v.strip()]
    calls = [rep["aging.calls"] for rep in r.repeats]
    assert values[0].strip() == f"{r.aging.calls:,}"
    assert values[1].strip().startswith(f"{round(sum(calls) / 3):,} +- ")
    assert values[2].strip() == f"{min(calls):,.0f} .. {max(calls):,.0f}"
    assert "-- Repeats" not in text  # the spread lives in the headline, not in a second table


def test_re_faults_have_one_meaning_and_the_writeback_is_told():
    """'re-faults' are evicted pages touched again; SPTEs built again after a zap are called that instead."""
    r = make_report()
    sp = r.spte
    sp.set_spte, sp.remapped, sp.gfns_mapped, sp.shadow_pages_created = 163_840, 32_768, 131_072, 257
    sp.pages_4k_at_build, sp.pages_4k_after_populate, sp.pages_4k_after_writeback, sp.pages_4k_at_end = \
        5, 131_078, 6, 32_774
    text = render_text(r)
    spte = " ".join(text.split("-- Mappings of data pages", 1)[1].split("\n-- ", 1)[0].split())
    assert "re-fault" not in spte and "32,768 of them of a gfn mapped before (its SPTE zapped and built" in spte
    assert "6 after its writeback" in spte
    assert "131,078 were present after the populate, 6 after its fsync, before the first pass" in spte
    assert re.search(r"\nre-faults +3 \(evicted pages the guest touched again\)", text)
    sp.pages_4k_after_writeback = None  # not measured: no claim about the writeback
    assert "writeback" not in render_text(r).split("-- Mappings of data pages", 1)[1].split("\n-- ", 1)[0]
