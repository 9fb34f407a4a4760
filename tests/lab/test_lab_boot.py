"""The lab tier: boot the lab kernel under emulation and check what it offers.

Each fixture boots the lab once (~20-40 s of boot, code ~17x slower inside),
so the whole tier stays within CI's ~10 minute budget.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers.lab import SUMMARY_RE, lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]


@pytest.fixture(scope="module")
def self_check(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("lab-check")
    res = lab(out, "python", "-m", "kvmctl.lab.selfcheck", "--out", "check.json")
    assert SUMMARY_RE.search(res.stderr), f"the lab did not boot: {res.stderr[-2000:]}"
    # written inside the lab into the shared outdir: proves outputs come back
    results = json.loads((out / "check.json").read_text())
    return {r["name"]: r for r in results}


@pytest.mark.parametrize("check", ["tdp", "guest", "kprobe", "fentry", "mglru", "aging", "nested"])
def test_lab_self_check(self_check, check):
    result = self_check[check]
    if result["skipped"]:
        pytest.skip(f"lab check {check}: {result['detail']}")
    assert result["ok"], result["detail"]


def test_lab_info_says_tdp_and_the_mglru_ager_runs(tmp_path):
    """One boot: `kvmctl info` inside says TDP; the MGLRU ager ages the VM's memcg and restores the knob."""
    py = sys.executable
    script = (f"cat /sys/kernel/mm/lru_gen/enabled > lru_gen_before.txt"
              f" && {py} -m kvmctl info --json > info.json"
              f" && {py} -m kvmctl experiment --ager mglru --mode between --mem 32M --passes 2 --no-trace "
              f"-o mglru.json"
              f" && cat /sys/kernel/mm/lru_gen/enabled > lru_gen_after.txt")
    res = lab(tmp_path, "sh", "-c", script)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["mmu"] == "tdp"
    assert info["kernel"]["release"] == SUMMARY_RE.search(res.stderr).group(1)
    report = json.loads((tmp_path / "mglru.json").read_text())
    assert report["complete"], report.get("incomplete_reason")
    assert [p["ager"] for p in report["passes"]] == ["mglru", "mglru"]
    assert (tmp_path / "lru_gen_after.txt").read_text() == (tmp_path / "lru_gen_before.txt").read_text()


def test_lab_nested_experiment_shows_aging_fall_back_to_rmap(tmp_path):
    """`kvmctl experiment --nested`: pass 0 ages before any L2 ran (TDP path only), pass 1 after the
    nested guest touched memory (every call walks the rmaps too); the report's verdict says so."""
    res = lab(tmp_path, "kvmctl", "experiment", "--nested", "--mem", "32M", "--passes", "2", "--quiet",
              "-o", "nested.json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "nested.json").read_text())
    assert report["complete"], report.get("incomplete_reason")
    before, after = report["passes"][0]["aging_paths"], report["passes"][1]["aging_paths"]
    assert before["tdp"] > 0 and before["rmap"] == before["both"] == 0, before
    assert after["rmap"] + after["both"] > 0, after
    assert report["fallback"]["verdict"] == "rmap (nested)"
    assert report["fallback"]["evidence"][0].startswith("aging_paths: before the nested guest ran (pass 0): tdp")


def test_lab_harvest_scores_kvms_accessed_bits_against_the_guest(tmp_path):
    """On the stock kernel's TDP MMU, every accessed bit an aging call cleared is a page the guest
    touched since that page was last aged while mapped (precision), and every such page visited had
    its bit cleared (recall); the cost of a pass comes from kvm_age_gfn's latency."""
    res = lab(tmp_path, "kvmctl", "experiment", "--mem", "64M", "--backing", "file", "--pattern", "hotcold:0.25:2",
              "--mode", "between", "--passes", "3", "--quiet", "-o", "harvest.json")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "harvest.json").read_text())
    assert report["complete"], report.get("incomplete_reason")
    harvest, cost = report["aging"]["harvest"], report["aging"]["pass_cost"]
    print(f"harvest: expected {harvest['expected_young']}, observed {harvest['observed_young']}, precision "
          f"{harvest['precision']}, recall {harvest['recall']}; pass cost {cost}")
    assert harvest["expected_young"] > 0 and harvest["precision"] >= 0.99 and harvest["recall"] >= 0.99, harvest
    assert cost["seconds_per_gib"] is not None and cost["source"], cost
    assert report["lost_events"] == 0
