"""run_lab's plumbing against a stand-in for virtme-ng: output, exit code, boot time, timeout cleanup.

The stand-in is a real process tree (it starts a child like vng starts QEMU),
so the timeout test proves that every process we started is gone afterwards.
Like virtme-ng without udev on the host, it exits 255 whatever the command
did: the command's output and status come back through the scratch dir.
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
from kvmctl.lab import runner
from kvmctl.lab.runner import ERR_FILE, OUT_FILE, STATUS_FILE, LabSpec, LabStalled, LabTimeout, run_lab
from kvmctl.lab.watchdog import STALL_EXIT, STALL_FILE

FAKE_VNG = """#!{python}
import json, os, subprocess, sys, time
scratch = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--rwdir="))
shell = sys.argv[sys.argv.index("--exec") + 1]
assert all(os.path.join(scratch, n) in shell for n in ("{out}", "{err}", "{status}")), shell
mode = os.environ["FAKE_MODE"]
print("[    0.000000] Linux version 6.1.0-test (console)", flush=True)
if mode != "noboot":
    with open(os.path.join(scratch, "{facts}"), "w") as f:
        json.dump({{"release": "6.1.0-test", "npt": "Y", "tdp_mmu": "Y"}}, f)
    with open(os.path.join(scratch, "{err}"), "w") as err:
        print("{marker} 6.1.0-test", file=err, flush=True)
        with open(os.path.join(scratch, "{out}"), "w") as out:
            for i in range(3):
                print(f"inner stdout {{i}}", file=out, flush=True)
                time.sleep(0.15)  # written while the host already tails the file
if mode == "stall":  # what the lab's watchdog leaves behind
    with open(os.path.join(scratch, "{stall}"), "w") as f:
        f.write("kvmctl-lab: no progress for 300 s\\nprocess 42: python -m kvmctl experiment\\n")
    with open(os.path.join(scratch, "{status}"), "w") as f:
        print({stall_exit}, file=f)
if mode in ("hang", "silent"):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_PIDS"], "w") as f:
        f.write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(600)
if mode == "ok":
    with open(os.path.join(scratch, "{status}"), "w") as f:
        print(os.environ.get("FAKE_RC", "0"), file=f)
sys.exit(255)
"""


@pytest.fixture
def fake_vng(tmp_path) -> Path:
    path = tmp_path / "bin" / "vng"
    path.parent.mkdir()
    path.write_text(FAKE_VNG.format(python=sys.executable, facts=FACTS_FILE, marker=READY_MARKER,
                                    out=OUT_FILE, err=ERR_FILE, status=STATUS_FILE, stall=STALL_FILE,
                                    stall_exit=STALL_EXIT))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _spec(tmp_path, timeout: float = 60.0, stall: float = 300.0) -> LabSpec:
    kernel = K.LabKernel(K.KernelSource.IMAGE, tmp_path / "bzImage", "6.1.0-test", None, None, None)
    return LabSpec(kernel=kernel, command=["true"], outdir=tmp_path / "out", timeout=timeout, stall=stall)


def test_output_exit_code_and_facts_come_back(tmp_path, fake_vng, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "ok")
    monkeypatch.setenv("FAKE_RC", "7")
    out, err = io.BytesIO(), io.BytesIO()
    result = run_lab(_spec(tmp_path), fake_vng, out, err)
    assert result.returncode == 7, "the command's status, not virtme-ng's 255"
    assert out.getvalue() == b"inner stdout 0\ninner stdout 1\ninner stdout 2\n"
    assert READY_MARKER.encode() in err.getvalue() and b"(console)" in err.getvalue()
    assert result.facts["tdp_mmu"] == "Y"
    assert result.boot_s is not None and 0 < result.boot_s <= result.wall_s


def test_a_command_that_left_no_status_reports_virtme_ngs(tmp_path, fake_vng, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "nostatus")  # the lab died before the shell wrote the status
    out = io.BytesIO()
    result = run_lab(_spec(tmp_path), fake_vng, out, io.BytesIO())
    assert result.returncode == 255
    assert out.getvalue().count(b"inner stdout") == 3


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


def test_a_stalled_command_ends_the_run_with_what_the_watchdog_found(tmp_path, fake_vng, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "stall")
    with pytest.raises(LabStalled, match="no progress .* for 300 s") as exc:
        run_lab(_spec(tmp_path), fake_vng, io.BytesIO(), io.BytesIO())
    assert exc.value.result.returncode == STALL_EXIT
    assert "process 42: python -m kvmctl experiment" in exc.value.result.stalled
    assert "--verbose" in exc.value.hint and "--stall" in exc.value.hint


def test_a_lab_that_stops_answering_is_ended_by_the_host(tmp_path, fake_vng, monkeypatch):
    """The lab's own watchdog never reports (a wedged lab kernel): the host ends it after a grace time."""
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("FAKE_MODE", "silent")
    monkeypatch.setenv("FAKE_PIDS", str(pids_file))
    monkeypatch.setattr(runner, "_STALL_GRACE_S", 1.0)
    with pytest.raises(LabStalled, match="did not answer") as exc:
        run_lab(_spec(tmp_path, stall=1.0), fake_vng, io.BytesIO(), io.BytesIO())
    assert exc.value.result.wall_s < 30
    for pid in (int(p) for p in pids_file.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
