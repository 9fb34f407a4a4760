"""The lab on a kernel built by scripts/build-lab-kernel.sh: idle page tracking for real.

Debian's stock kernel has no CONFIG_IDLE_PAGE_TRACKING, so the page_idle ager
and its tests only skip on it. On a built tree (`kvmctl lab --kernel TREE`,
the build-tree path of the lab) the page_idle host tests run inside the lab,
and an experiment with the page_idle ager scores its idle bits against the
guest's ground truth.

A manual run, not part of CI: set KVMCTL_LAB_KERNEL to the tree. The
file-backed VM case is not yet reliable in the lab: in one run of five every
cold page read back young (cause not known; see docs/lab.md), so its
experiment must find every touched page young (recall) while its precision is
only printed. The THP-backed experiment in the same boot must score both: its
huge pages are wholly hot or wholly cold (the hot quarter of 32 MiB is 8 MiB,
whole 2 MiB pages), and the host tests read such pages right (1.000).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tests.helpers.lab import SUMMARY_RE, lab


pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TREE_ENV = "KVMCTL_LAB_KERNEL"


def built_tree() -> Path | None:
    """$KVMCTL_LAB_KERNEL if it is a build tree with idle page tracking."""
    if not os.environ.get(TREE_ENV):
        return None
    tree = Path(os.environ[TREE_ENV])
    config = tree / ".config"
    if (tree / "arch/x86/boot/bzImage").is_file() and config.is_file() \
            and "CONFIG_IDLE_PAGE_TRACKING=y" in config.read_text().splitlines():
        return tree
    return None


@pytest.fixture(scope="module")
def tree() -> Path:
    found = built_tree()
    if found is None:
        pytest.skip(f"manual lab run: set {TREE_ENV} to a kernel build tree with CONFIG_IDLE_PAGE_TRACKING=y "
                    f"(build one with scripts/build-lab-kernel.sh, ~25 min; it prints the tree)")
    return found


def test_page_idle_tests_and_experiment_on_a_built_kernel(tree, tmp_path):
    py = sys.executable
    tests = REPO / "tests/agers/test_page_idle_host.py"
    experiment = f"{py} -m kvmctl experiment --ager page_idle --mem 32M --passes 2 --quiet"
    script = (f"{py} -m pytest {tests} -p no:cacheprovider -q -rs -s > page_idle_tests.txt 2>&1;"
              f" echo $? > page_idle_tests.rc;"
              f" {experiment} -o idle.json && {experiment} --backing thp -o idle_thp.json")
    res = lab(tmp_path, "sh", "-c", script, kernel=tree, timeout_s=720)
    summary = SUMMARY_RE.search(res.stderr)
    assert summary and summary.group(1).endswith("-kvmctl-lab"), res.stderr[-3000:]
    log = (tmp_path / "page_idle_tests.txt").read_text()
    print(log)
    assert (tmp_path / "page_idle_tests.rc").read_text().strip() == "0", log[-3000:]
    assert "3 passed" in log and "skipped" not in log, log[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    # Young/idle verdicts against the pages the guest touched between the passes (a quarter of
    # the guest). Recall: no touched page may read idle.
    file_gt = _ground_truth(tmp_path / "idle.json")
    print(f"page_idle experiment, file-backed: precision {file_gt['precision']}, recall {file_gt['recall']}")
    assert file_gt["recall"] >= 0.99, file_gt
    # Precision: no untouched page may read young. The file-backed guest's varied 0.43-1.0 over
    # four lab runs (cause not known yet); the THP-backed guest's must hold.
    thp_gt = _ground_truth(tmp_path / "idle_thp.json")
    print(f"page_idle experiment, THP-backed: precision {thp_gt['precision']}, recall {thp_gt['recall']}")
    assert thp_gt["recall"] >= 0.99 and thp_gt["precision"] >= 0.99, thp_gt


def _ground_truth(path: Path) -> dict:
    report = json.loads(path.read_text())
    assert report["complete"], report.get("incomplete_reason")
    assert [p["ager"] for p in report["passes"]] == ["page_idle", "page_idle"]
    assert report["ground_truth"]["precision"] is not None, report["probes"]["not_observable"]
    return report["ground_truth"]
