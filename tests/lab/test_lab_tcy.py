"""The lab on our kernel with the test_clear_young series (kernels/test-clear-young).

Each test is one `kvmctl lab compare` (one boot, two sides) or one lab run,
checking what a reviewer of the series needs to see: with the cap on, aging
goes through the lockless hook and stops taking mmu_lock, and the bits it
clears are the pages the guest touched; with a nested guest, the series'
original rule (`v1`) disables the hook for the VM, the fixed rule keeps it.

The tree is $KVMCTL_LAB_TCY_KERNEL, else the one scripts/build-lab-kernel.sh
--patches kernels/test-clear-young leaves in the lab dir; without either the
tests skip with that command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmctl.lab.compare import HOOK_SYMBOL, has_symbol
from kvmctl.lab.kernel import lab_dir
from tests.helpers.lab import lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TREE_ENV = "KVMCTL_LAB_TCY_KERNEL"
BUILD = "scripts/build-lab-kernel.sh --patches kernels/test-clear-young"
COMPARE_TIMEOUT_S = 1500


def patched_tree() -> Path | None:
    candidates = [Path(os.environ[TREE_ENV])] if os.environ.get(TREE_ENV) else \
        sorted(lab_dir().glob("src/linux-source-*+test-clear-young"))
    for tree in candidates:
        smap = tree / "System.map"
        if (tree / "arch/x86/boot/bzImage").is_file() and smap.is_file() and has_symbol(smap, HOOK_SYMBOL):
            return tree
    return None


@pytest.fixture(scope="module")
def tree() -> Path:
    found = patched_tree()
    if found is None:
        pytest.skip(f"no kernel tree with the test_clear_young series: build one with {BUILD} "
                    f"(~12 min with a warm ccache, 25-40 min cold) or set {TREE_ENV}")
    return found


def compare(outdir: Path, tree: Path, sets: list[str], *experiment: str) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    argv = [sys.executable, "-m", "kvmctl", "lab", "compare", "--kernel", str(tree), "--repeat", "1",
            "--outdir", str(outdir), "--timeout", f"{COMPARE_TIMEOUT_S}s"]
    for s in sets:
        argv += ["--set", s]
    res = subprocess.run([*argv, "--", "kvmctl", "experiment", "--quiet", *experiment], capture_output=True,
                         text=True, timeout=COMPARE_TIMEOUT_S + 120)
    print(f"lab compare {' '.join(sets)}: rc={res.returncode} wall={time.monotonic() - t0:.1f}s\n"
          f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr[-4000:]}")
    return res


def report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_cap_on_sends_aging_through_the_hook_and_clears_what_the_guest_touched(tree, tmp_path):
    res = compare(tmp_path, tree, ["lru_gen=0x0007,0x000f"], "--mem", "128M", "--vcpus", "2", "--access",
                  "write", "--ager", "mglru", "--ager-opt", "evict=1", "--passes", "2", "--mode", "between")
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("compare.txt", "compare.json", "compare.html"):
        assert (tmp_path / name).is_file(), name
    off = report(tmp_path / f"{tree.name}+lru_gen=0x0007.json")
    on = report(tmp_path / f"{tree.name}+lru_gen=0x000f.json")
    assert off["host"]["test_clear_young"]["symbol"] == HOOK_SYMBOL
    assert off["aging"]["test_clear_young"]["lru_gen_cap"] == "off"
    assert on["aging"]["test_clear_young"]["lru_gen_cap"] == "on"
    # cap off: every aging request is a locked clear_flush_young
    assert off["aging"]["lockless_share"] == 0.0 and off["aging"]["test_clear_young"]["calls"] == 0
    locked_off = off["contention"]["aging_mmu_lock_acquisitions"]
    assert locked_off > 0
    # cap on: at least 95% through the hook, mmu_lock taken 10x less often
    assert on["aging"]["lockless_share"] >= 0.95, on["aging"]
    assert on["contention"]["aging_mmu_lock_acquisitions"] * 10 <= locked_off, on["contention"]
    # the bits the hook cleared are the pages the guest touched since the previous pass (within 1%)
    for row in on["passes"]:
        touched, cleared = row["touched_pages"], row["hook_cleared"]
        assert touched and abs(cleared - touched) <= 0.01 * touched, row
    for r in (off, on):
        assert r["ground_truth"]["hot_resident_fraction"] >= 0.99 and r["ground_truth"]["evicted_cold_fraction"] >= 0.99
        assert r["lost_events"] == 0


def test_nested_guest_v1_disables_the_hook_and_fixed_keeps_it(tree, tmp_path):
    res = compare(tmp_path, tree, ["kvm.test_clear_young_nested=v1,fixed"], "--nested", "--mem", "32M",
                  "--passes", "2", "--ager", "mglru", "--ager-opt", "evict=1")
    assert res.returncode == 0, res.stderr[-3000:]
    v1 = report(tmp_path / f"{tree.name}+kvm.test_clear_young_nested=v1.json")
    fixed = report(tmp_path / f"{tree.name}+kvm.test_clear_young_nested=fixed.json")
    assert v1["fallback"]["verdict"] == "rmap (nested): test_clear_young disabled: this VM has run a nested guest"
    after = v1["passes"][1]  # pass 0 ages before the L2 ran; pass 1 after
    assert after["lockless_share"] == 0.0 and after["notifier_paths"].get("refused:nested", 0) > 0, after
    assert v1["aging"]["test_clear_young"]["refused_nested"] > 0
    assert fixed["aging"]["test_clear_young"]["refused_nested"] == 0
    assert fixed["passes"][1]["lockless_share"] >= 0.95, fixed["passes"][1]
    assert fixed["fallback"]["verdict"] == "rmap (nested)"


def test_hook_programs_load_on_the_patched_kernel(tree, tmp_path):
    res = lab(tmp_path, "pytest", str(REPO / "tests/bpf/test_programs_load.py"), "-k", "hook", "-q",
              "-p", "no:cacheprovider", kernel=tree, timeout_s=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "6 passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-3000:]
