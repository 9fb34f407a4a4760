"""The acceptance run: `kvmctl experiment --mem 512M` with every other option at its default.

A 512 MiB file-backed guest touches a hot quarter that moves to the next
quarter every pass (moving:0.25:1) while memcg reclaim squeezes its cgroup
every pass to its usage after populating minus half the guest's size. So
every pass has work: the new hot quarter comes in, and the host must make
room by evicting cold pages, among them the quarter that was hot a pass ago.
The host must keep the hot set resident, evict (almost) only cold pages, and
every pass must say it worked; the report must carry every key other tools
rely on, each null explained.
"""

from __future__ import annotations

import os

import pytest

from kvmctl.placement import format_cpu_list, resolve_placement
from kvmctl.report import schema as rm
from tests.helpers.experiments import assert_memslots_consistent, assert_nulls_explained, by_class, dig, run_cli

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]

MEM = 512 << 20
PAGES = MEM >> 12


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return run_cli(tmp_path_factory.mktemp("default"), "--mem", "512M")


def test_every_pass_does_work_on_a_moving_hot_set(report):
    gt = report["ground_truth"]
    assert report["complete"] is True, report["incomplete_reason"]
    assert gt["hot_pages"] == PAGES // 4 and gt["hot_pages"] + gt["cold_pages"] == PAGES
    passes = report["passes"]
    assert len(passes) >= 3
    # on failure, say how much of each touch phase the guest really ran (a descheduled vCPU touches nothing)
    ran = [f"{e['guest_seconds'] / e['wall_seconds']:.2f}" for e in report["epochs"] if e["vcpu"] == -1]
    for row in passes:
        why = f"pass {row['pass']}: {row}; guest time / wall time per touch phase: {ran}"
        assert row["result"] == "worked" and row["result_reason"] is None, why
        assert row["aging_calls"] > 0 and row["evicted_pages"] > 0, why
        assert row["touched_pages"] == PAGES // 4 and row["cold_pages"] == PAGES - PAGES // 4, why
        assert row["hot_resident_fraction"] >= 0.95, why  # hot kept
        assert row["evicted_cold_pages"] >= 0.95 * row["evicted_pages"], why  # cold evicted
    # the squeeze takes half the guest away: pass 0 evicts about half the pages (the VM process's own memory
    # takes a share); every later pass makes room for the quarter that just became hot
    assert 0.4 * PAGES <= passes[0]["evicted_pages"] <= 0.55 * PAGES, passes[0]
    for row in passes[1:]:
        assert row["moved_pages"] == PAGES // 4, row
        assert 0.15 * PAGES <= row["evicted_pages"] <= 0.35 * PAGES, row
        # the quarter that became hot had been evicted before: the guest faulted it back in
        assert row["refaults"] >= 0.9 * row["touched_pages"], row
    assert gt["evicted_cold_fraction"] >= 0.95, gt
    assert gt["refaults"] == sum(p["refaults"] for p in passes) + gt["final_refaults"], gt


def test_the_report_says_how_fast_the_host_noticed_each_move(report):
    gt = report["ground_truth"]
    shifts = gt["shifts"]
    assert [s["pass"] for s in shifts] == list(range(1, len(report["passes"])))
    for s in shifts:
        assert s["moved_pages"] == s["cooled_pages"] == PAGES // 4, s
        assert len(s["cooled_resident_fraction"]) >= 1
        if s["passes_to_adapt"] is not None:
            assert s["passes_to_adapt"] == len(s["cooled_resident_fraction"])
            assert s["cooled_resident_fraction"][-1] <= 0.01
    # the first move is followed for the rest of the run: with room for two quarters, the host must have
    # evicted the quarter that went cold at pass 1 by the end
    assert shifts[0]["passes_to_adapt"] is not None, shifts[0]
    assert gt["passes_to_adapt"] == max(s["passes_to_adapt"] for s in shifts if s["passes_to_adapt"] is not None)


def test_every_required_key_exists_and_each_null_has_a_reason(report):
    assert report["schema_version"] == rm.SCHEMA_VERSION
    assert report["kind"] == rm.KIND
    for key in ("host.mmu", "probes.chosen", "probes.not_observable", "aging.calls", "aging.pages",
                "aging.background_calls", "aging.bits_cleared", "ground_truth.hot_resident_fraction",
                "ground_truth.evicted_cold_fraction", "ground_truth.refaults", "contention.mmu_lock_wait_ns",
                "fallback.verdict", "fallback.rmap_share", "lost_events", "trace_window.start_ns",
                "trace_window.end_ns"):
        dig(report, key)  # raises if absent
    assert_nulls_explained(report)
    assert rm.Report.from_dict(report).unexplained_nulls() == []
    assert_memslots_consistent(report, MEM, 1)
    assert report["memslots"][0]["backing"] == "file"
    assert report["probes"]["chosen"]["aging.calls"].startswith("tracepoint:kvm:kvm_age_hva")


def test_fallback_verdict_follows_the_host_probe(report, host_caps):
    # no nested guest runs in this experiment: the MMU mode alone decides
    expected = rm.Verdict.RMAP_SHADOW if host_caps.mmu.value == "shadow" else rm.Verdict.TDP
    assert report["host"]["mmu"] == host_caps.mmu.value
    assert report["fallback"]["verdict"] == expected.value
    if expected is rm.Verdict.RMAP_SHADOW:
        assert report["fallback"]["rmap_share"] == 1.0
        assert report["aging"]["bits_cleared"] is None
        assert "TDP" in report["probes"]["not_observable"]["aging.bits_cleared"]  # names the missing MMU


def test_aging_figures_add_up(report):
    a = report["aging"]
    assert a["calls"] > 0 and a["pages"] >= a["calls"]
    assert sum(r["calls"] for r in a["by_task"]) == a["calls"]
    assert sum(r["pages"] for r in a["by_task"]) == a["pages"]
    classes = by_class(report)
    assert classes.get("ours", 0) > 0, "memcg reclaim in our thread made no aging call"
    assert a["background_calls"] == sum(classes.get(c, 0) for c in ("kswapd", "kdamond", "other"))
    assert sum(s["calls"] for s in a["series"]) == a["calls"]
    assert sum(s["background_calls"] for s in a["series"]) == a["background_calls"]
    assert a["ours_calls"] == classes["ours"] and a["ours_calls"] + a["background_calls"] <= a["calls"]
    # every pass's calls happened inside its window and are part of the total; its window holds its ager
    assert sum(p["aging_calls"] for p in report["passes"]) <= a["calls"]
    assert sum(p["ours_calls"] for p in report["passes"]) <= a["ours_calls"]
    for p in report["passes"]:
        assert p["ours_calls"] + p["background_calls"] <= p["aging_calls"], p
        assert 0 < p["ager_ns"] <= p["end_ns"] - p["start_ns"], p
    assert report["passes"][0]["ours_calls"] > 0  # the first squeeze reclaims in our thread
    heat = report["heatmaps"][0]
    assert sum(heat["aged"]) == a["pages"]  # 1 memslot: per-page visits sum to the pages covered


def test_trace_window_covers_the_run(report):
    w = report["trace_window"]
    assert 0 < w["start_ns"] < w["end_ns"]
    for e in report["epochs"]:
        assert w["start_ns"] <= e["start_ns"] <= e["end_ns"] <= w["end_ns"]
    for p in report["passes"]:
        assert w["start_ns"] <= p["start_ns"] <= p["end_ns"] <= w["end_ns"]
    assert isinstance(report["lost_events"], int) and report["lost_events"] >= 0
    if report["lost_events"]:
        assert any(n.startswith("lost events:") for n in report["notes"])


def test_vm_and_ager_run_on_separate_cpus_as_read_back(report):
    """auto placement: one vCPU, and on a host with 2+ CPUs the ager keeps the first to itself."""
    placement = resolve_placement("auto", "auto", vcpus=1)
    note = next(n for n in report["notes"] if n.startswith("CPU placement: "))
    assert placement.describe() in note
    expected = format_cpu_list(placement.vm if placement.vm is not None else frozenset(os.sched_getaffinity(0)))
    assert note.endswith(f"vCPU threads may run on CPUs {expected} (sched_getaffinity of each vCPU thread)"), note
