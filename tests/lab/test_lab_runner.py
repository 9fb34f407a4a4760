"""run_lab's plumbing against a stand-in for virtme-ng: output, exit code, boot time, timeout cleanup.

The stand-in is a real process tree (it starts a child like vng starts QEMU),
so the timeout test proves that every process we started is gone afterwards.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import psutil
import pytest

from kvmctl.errors import GuestError
from kvmctl.lab import kernel as K
from kvmctl.lab.inside import FACTS_FILE, READY_MARKER
from kvmctl.lab.runner import LabSpec, LabTimeout, run_lab

FAKE_VNG = """#!{python}
import json, os, subprocess, sys, time
scratch = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--rwdir="))
mode = os.environ["FAKE_MODE"]
if mode != "noboot":
    with open(os.path.join(scratch, "{facts}"), "w") as f:
        json.dump({{"release": "6.1.0-test", "npt": "Y", "tdp_mmu": "Y"}}, f)
    print("{marker} 6.1.0-test", file=sys.stderr, flush=True)
print("inner stdout", flush=True)
if mode == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_PIDS"], "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(600)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


@pytest.fixture
def fake_vng(tmp_path) -> Path:
    path = tmp_path / "bin" / "vng"
    path.parent.mkdir()
    path.write_text(FAKE_VNG.format(python=sys.executable, facts=FACTS_FILE, marker=READY_MARKER))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _spec(tmp_path, timeout: float = 60.0) -> LabSpec:
    kernel = K.LabKernel(K.KernelSource.IMAGE, tmp_path / "bzImage", "6.1.0-test", None, None, None)
    return LabSpec(kernel=kernel, command=["true"], outdir=tmp_path / "out", timeout=timeout)


def test_output_exit_code_and_facts_come_back(tmp_path, fake_vng, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "ok")
    monkeypatch.setenv("FAKE_RC", "7")
    out, err = io.BytesIO(), io.BytesIO()
    result = run_lab(_spec(tmp_path), fake_vng, out, err)
    assert result.returncode == 7
    assert out.getvalue() == b"inner stdout\n"
    assert READY_MARKER.encode() in err.getvalue()
    assert result.facts["tdp_mmu"] == "Y"
    assert result.boot_s is not None and 0 < result.boot_s <= result.wall_s


def test_a_kernel_that_never_reaches_the_command_is_an_error(tmp_path, fake_vng, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "noboot")
    with pytest.raises(GuestError, match="did not reach the command") as exc:
        run_lab(_spec(tmp_path), fake_vng, io.BytesIO(), io.BytesIO())
    assert "--verbose" in exc.value.hint


def test_timeout_ends_every_process_we_started(tmp_path, fake_vng, monkeypatch):
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PIDS", str(pids_file))
    with pytest.raises(LabTimeout) as exc:
        run_lab(_spec(tmp_path, timeout=3.0), fake_vng, io.BytesIO(), io.BytesIO())
    assert exc.value.result.timed_out
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert os.listdir(tmp_path / "out") == []
