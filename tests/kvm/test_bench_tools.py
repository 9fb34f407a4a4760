"""The benchmark's C references still build and run the guest Python prepares.

Functional checks only (a few hundred exits, one tiny VM): the timing itself
lives in scripts/bench_core.py, which is run by hand, never by the suite.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.mailbox import SYNC_READY, Port

pytestmark = pytest.mark.kvm

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    if not (SCRIPTS / "bench_core.py").exists():
        pytest.skip(f"no benchmark scripts at {SCRIPTS}")
    spec = importlib.util.spec_from_file_location("bench_core", SCRIPTS / "bench_core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    tmp = tmp_path_factory.mktemp("bench")
    for src in (SCRIPTS / "bench").glob("*.c"):  # -Werror: warnings in reference code are bugs too
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp / src.stem), str(src)], check=True)
    return module, tmp


def test_native_touch_loop(bench):
    _, tmp = bench
    p = subprocess.run([str(tmp / "touch_native"), str(2 << 20)], input="2\n1\n", capture_output=True, text=True,
                       timeout=60, check=True)
    lines = p.stdout.splitlines()
    assert lines[0] == "ready" and [line.split()[:2] for line in lines[1:]] == [["pass", "0"], ["pass", "1"],
                                                                              ["pass", "2"]]
    assert all(int(line.split()[2]) > 0 for line in lines[1:])


def test_c_vm_starts_the_same_guest(bench):
    module, tmp = bench
    with GuestMachine(MachineSpec(4 << 20, 1)) as m:
        module.write_image(m, tmp / "touch.img")
    (_, ns, data), = module.run_c(tmp / "kvm_guest", tmp / "touch.img", "create", 1, int(Port.SYNC))
    assert int(data) == SYNC_READY and int(ns) > 0


def test_c_exit_loop_counts_every_exit(bench):
    module, tmp = bench
    with GuestMachine(MachineSpec(2 << 20, 1, payload="pingpong")) as m:
        m.mailboxes[0].arg0 = 300
        module.write_image(m, tmp / "pingpong.img")
    (_, n, ns), = module.run_c(tmp / "kvm_guest", tmp / "pingpong.img", "loop", int(Port.PING), int(Port.EXIT))
    assert int(n) == 300 and int(ns) > 0
