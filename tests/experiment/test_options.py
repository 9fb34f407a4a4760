"""`kvmctl experiment` beyond the defaults: other agers, modes, repeats, backings, memslots, vCPUs.

Small guests (128-256 MiB) keep each run to a few seconds; every report must
still be complete, carry every required key with each null explained, and
score what it can.
"""

from __future__ import annotations

import pytest

from kvmctl.report import schema as rm
from kvmctl.report.figures import HEADLINE
from tests.helpers.experiments import assert_memslots_consistent, assert_nulls_explained, by_class, run_cli_text

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20


def complete(report: dict) -> dict:
    assert report["complete"] is True, report["incomplete_reason"]
    assert_nulls_explained(report)
    assert rm.Report.from_dict(report).unexplained_nulls() == []
    return report


def assert_hot_kept_over_cold(report: dict) -> None:
    """Reclaim kept hot pages in preference to cold ones.

    The strict 99 % figures belong to the acceptance run (test_default_experiment.py).
    These runs test memslots and vCPUs; one 2-memslot run in a busy test session kept
    only 62.5 % of its hot pages, which 15 reruns (also with both cores kept busy) did
    not reproduce, so the cause is not known yet (the host's own kdamond pages out
    memory it considers cold: a suspect, not a finding).
    """
    p = report["passes"][0]
    assert p["evicted_pages"] > 0, p
    assert p["hot_resident_fraction"] > p["cold_resident_fraction"], p
    assert report["ground_truth"]["evicted_cold_fraction"] > 0.5, report["ground_truth"]


def data_epochs(report: dict) -> list[dict]:
    """Epoch rows of single epochs (vcpu >= 0), populate excluded."""
    return [e for e in report["epochs"] if e["vcpu"] >= 0 and e["epoch"] > 0]


def test_passive_ager_observes_background_aging_only(experiment):
    r = complete(experiment("--ager", "passive", "--mem", "128M", "--passes", "2", "--ager-opt", "pass_s=0.5"))
    assert r["spec"]["ager"] == "passive" and r["spec"]["ager_options"] == {"pass_s": 0.5}
    assert by_class(r).get("ours", 0) == 0, "a passive pass made aging calls of its own"
    assert r["aging"]["calls"] == sum(by_class(r).values())
    for p in r["passes"]:
        assert p["ager"] == "passive" and p["end_ns"] - p["start_ns"] >= 0.5e9
    # no squeeze: what the host evicted anyway (a foreign kdamond's pageout) is still scored
    assert r["ground_truth"]["hot_resident_fraction"] is not None


def test_between_mode_runs_passes_while_the_guest_is_paused(experiment):
    r = complete(experiment("--mode", "between", "--epochs-per-pass", "2", "--passes", "2", "--mem", "128M"))
    epochs = data_epochs(r)
    # 2 passes x 2 epochs, then the final touch phase of 2 epochs, one vCPU
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5, 6]
    assert all(e["pattern"] == "moving:0.25:1" for e in epochs)
    for i, p in enumerate(r["passes"]):
        before, after = epochs[2 * i + 1], epochs[2 * i + 2]
        assert before["end_ns"] <= p["start_ns"] <= p["end_ns"] <= after["start_ns"], (i, p)
        assert p["evicted_pages"] is not None and p["hot_resident_fraction"] is not None
    assert r["passes"][0]["evicted_pages"] > 0, "the first squeeze evicted nothing"
    assert r["passes"][0]["aging_calls"] > 0


def test_repeat_keeps_every_runs_headline(experiment):
    r = complete(experiment("--repeat", "2", "--mem", "128M", "--passes", "1"))
    assert len(r["repeats"]) == 2
    keys = {f.key for f in HEADLINE}
    for run in r["repeats"]:
        assert set(run) == keys
        assert run["ground_truth.hot_resident_fraction"] is not None
    assert r["repeats"][-1]["aging.calls"] == float(r["aging"]["calls"])  # the last run is the report's body


def test_anon_backing_says_why_residency_is_not_observable(experiment):
    r = complete(experiment("--backing", "anon", "--ager", "passive", "--mem", "128M", "--passes", "1"))
    assert r["memslots"][0]["backing"] == "anon"
    gt, reasons = r["ground_truth"], r["probes"]["not_observable"]
    for key in ("hot_resident_fraction", "evicted_cold_fraction", "refaults"):
        assert gt[key] is None
        assert "anon" in reasons[f"ground_truth.{key}"] and "mincore" in reasons[f"ground_truth.{key}"]
    assert r["aging"]["calls"] is not None  # the probes still count what the host did


def test_two_memslots_are_traced_and_scored_as_one_guest(experiment):
    r = complete(experiment("--memslots", "2", "--mem", "256M", "--passes", "1"))
    assert_memslots_consistent(r, 256 * MiB, 2)
    assert [h["slot"] for h in r["heatmaps"]] == [m["slot"] for m in r["memslots"]]
    for h in r["heatmaps"]:
        assert h["pages"] == 128 * MiB >> 12
        assert sum(h["aged"]) > 0, f"memslot {h['slot']}: no aging visit"
    assert sum(sum(h["aged"]) for h in r["heatmaps"]) == r["aging"]["pages"]
    gt = r["ground_truth"]
    assert gt["hot_pages"] + gt["cold_pages"] == 256 * MiB >> 12
    assert_hot_kept_over_cold(r)


def test_two_vcpus_touch_their_own_regions(experiment):
    r = complete(experiment("--vcpus", "2", "--mem", "256M", "--passes", "1"))
    populate = [e for e in r["epochs"] if e["epoch"] == 0]
    assert sorted(e["vcpu"] for e in populate) == [0, 1]
    assert sum(e["pages_touched"] for e in populate) == 256 * MiB >> 12  # partitioned: each vCPU half
    loops = [e for e in r["epochs"] if e["vcpu"] == -1]
    assert loops and all(e["pages_touched"] > 0 for e in loops)
    gt = r["ground_truth"]
    assert gt["hot_pages"] == (256 * MiB >> 12) // 4  # 25 % of each vCPU's half
    assert_hot_kept_over_cold(r)
    assert r["vm_stats"]["pages_4k"] >= gt["hot_pages"]


def test_a_pass_with_nothing_to_do_says_so_in_the_pass_table(tmp_path):
    """A target above what the guest can use: every squeeze finds nothing to reclaim, and the table says so."""
    proc, r = run_cli_text(tmp_path, "--ager-opt", f"target_bytes={1 << 40}", "--passes", "2", "--mem", "128M")
    assert proc.returncode == 0, proc.stderr
    for row in r["passes"]:
        assert row["result"] == "did nothing" and "nothing to reclaim" in row["result_reason"], row
        assert "MiB" in row["result_reason"] and "1.0 TiB" in row["result_reason"], "sizes for people, not bytes"
    rows = proc.stdout[proc.stdout.index("-- Ager passes"):].splitlines()
    flagged = [i for i, line in enumerate(rows) if line.lstrip().startswith("DID NOTHING: nothing to reclaim")]
    assert [rows[i - 1].split()[0] for i in flagged] == ["0", "1"], "the words stand under each pass's row"


def test_a_failed_ager_step_fails_the_pass_and_the_report(tmp_path):
    """memfd guest memory is shmem: without swap no squeeze can reclaim it, and the limit write fails (EBUSY)."""
    from kvmctl.probe import probe_host

    if probe_host(load_bpf=False).memory.swap:
        pytest.skip("this host has swap: reclaim can take shmem guest memory, so no squeeze fails")
    proc, r = run_cli_text(tmp_path, "--backing", "memfd", "--passes", "1", "--mem", "128M", expect_exit=1)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kvmctl: error:")]
    assert len(errors) == 1 and "pass 0 of the memcg ager failed" in errors[0], proc.stderr
    assert r["complete"] is False and "pass 0 of the memcg ager failed" in r["incomplete_reason"]
    row = r["passes"][0]
    assert row["result"] == "failed" and "Device or resource busy" in row["result_reason"], row
    assert r["aging"]["calls"] is not None and row["touched_pages"] > 0, "the figures of the run are kept"
