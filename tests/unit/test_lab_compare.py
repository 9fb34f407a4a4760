"""`kvmctl lab compare`: sides, settings and the script each lab boot runs (pure parts)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kvmctl.errors import UsageError
from kvmctl.lab import compare
from kvmctl.lab.kernel import KernelSource, LabKernel


def tree_kernel(tmp_path: Path, name: str, hook: bool) -> LabKernel:
    tree = tmp_path / name
    (tree / "arch/x86/boot").mkdir(parents=True)
    symbols = ["ffffffff81000000 T _stext", "ffffffff81234560 T kvm_age_gfn"]
    if hook:
        symbols.append("ffffffff81234567 T kvm_arch_test_clear_young")
    (tree / "System.map").write_text("\n".join(symbols) + "\n")
    return LabKernel(KernelSource.TREE, tree / "arch/x86/boot/bzImage", "6.1.192-kvmctl-lab", None, tree, None)


def test_sets_cross_into_every_combination():
    combos = compare.parse_sets(["lru_gen=0x0007,0x000f", "kvm.test_clear_young_nested=v1,fixed"])
    assert [[f"{s.knob.name}={s.value}" for s in c] for c in combos] == [
        ["lru_gen=0x0007", "kvm.test_clear_young_nested=v1"], ["lru_gen=0x0007", "kvm.test_clear_young_nested=fixed"],
        ["lru_gen=0x000f", "kvm.test_clear_young_nested=v1"], ["lru_gen=0x000f", "kvm.test_clear_young_nested=fixed"]]
    assert compare.parse_sets([]) == [[]]
    assert str(combos[0][1].knob.path) == "/sys/module/kvm/parameters/test_clear_young_nested"


@pytest.mark.parametrize(("item", "message"), [
    ("lru_gen", "is not KNOB=V1"), ("lru_gen=", "is not KNOB=V1"), ("lru_gen=0x7,zz", "not a number"),
    ("swappiness=1", "unknown setting"), ("../etc.passwd=1", "unknown setting")])
def test_bad_sets_are_one_line_errors(item, message):
    with pytest.raises(UsageError, match=message):
        compare.parse_sets([item])


def test_the_cap_needs_the_series_and_a_stock_kernel_leaves_that_side_out(tmp_path):
    stock, tree = tree_kernel(tmp_path, "stock", False), tree_kernel(tmp_path, "tcy", True)
    cap_on = (compare.Setting(compare.knob("lru_gen"), "0x000f"),)
    cap_off = (compare.Setting(compare.knob("lru_gen"), "0x0007"),)
    assert "lacks (no kvm_arch_test_clear_young" in compare.lacking(compare.Side("s", stock, cap_on))
    assert compare.lacking(compare.Side("s", stock, cap_off)) is None
    assert compare.lacking(compare.Side("t", tree, cap_on)) is None


@pytest.mark.parametrize(("command", "message"), [
    (["kvmctl", "info"], "must be 'kvmctl experiment"), (["kvmctl", "experiment", "-o", "x.json"], "sets -o"),
    (["kvmctl", "experiment", "--repeat", "2"], "sets --repeat"), (["kvmctl", "experiment", "--output=x"], "--output")])
def test_compare_owns_the_output_and_the_repeats(command, message):
    with pytest.raises(UsageError, match=message):
        compare.experiment_args(command)


def test_the_experiment_is_checked_before_anything_boots():
    with pytest.raises(UsageError, match="is not a size"):
        compare.check_experiment(["--mem", "1Z"])
    compare.check_experiment(["--mem", "128M", "--ager", "mglru", "--passes", "3"])


def test_side_script_sets_checks_and_runs_each_side(tmp_path):
    k = tree_kernel(tmp_path, "tcy", True)
    sides = [compare.Side(compare.side_name("tcy", list(c)), k, tuple(c))
             for c in compare.parse_sets(["lru_gen=0x0007,0x000f"])]
    assert [s.name for s in sides] == ["tcy+lru_gen=0x0007", "tcy+lru_gen=0x000f"]
    script = compare.side_script(sides, ["--ager", "mglru", "--mem", "128M"], "/venv/bin/python", 3)
    assert "echo 0x000f > /sys/kernel/mm/lru_gen/enabled" in script
    assert "--ager-opt test_clear_young=keep --repeat 3 -o tcy+lru_gen=0x000f.json" in script
    assert f"exit {compare.EXIT_UNSUPPORTED}" in script
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)  # it parses
    plain = compare.side_script(sides[:1], ["--ager", "memcg"], "/venv/bin/python", 1)
    assert "test_clear_young=keep" not in plain


def test_a_knob_the_kernel_ignores_stops_the_boot(tmp_path):
    """The script's read-back check, run against a fake knob that drops bit 3 like a stock kernel."""
    knob_file = tmp_path / "enabled"
    knob_file.write_text("0x0007\n")
    k = compare.Knob("lru_gen", knob_file, True)
    side = compare.Side("stock+lru_gen=0xf", tree_kernel(tmp_path, "stock", False), (compare.Setting(k, "0xf"),))
    script = compare.side_script([side], [], "true", 1)
    # a file keeps what is written, so emulate the kernel: rewrite the check's view
    script = script.replace(f"echo 0xf > {knob_file}", f"echo 0x0007 > {knob_file}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == compare.EXIT_UNSUPPORTED
    assert "does not take lru_gen=0xf" in done.stderr and "reads 0x0007" in done.stderr
