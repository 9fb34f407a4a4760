"""`kvmctl lab` errors that need no lab: one line, a hint, the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys

from kvmctl.errors import ExitCode


def kvmctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmctl", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_missing_kernel_path_is_a_usage_error(tmp_path):
    res = kvmctl("lab", "--kernel", str(tmp_path / "nope"), "--", "kvmctl", "info")
    assert res.returncode == ExitCode.USAGE
    assert res.stderr.count("\n") == 1 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_lab_not_set_up_points_at_the_setup_script(tmp_path):
    env = dict(os.environ, KVMCTL_LAB_DIR=str(tmp_path))
    res = kvmctl("lab", "--", "kvmctl", "info", env=env)
    assert res.returncode == ExitCode.UNSUPPORTED
    assert "scripts/setup-lab.sh" in res.stderr and res.stderr.count("\n") == 1


def test_json_with_a_command_is_refused():
    res = kvmctl("lab", "--json", "--", "kvmctl", "info")
    assert res.returncode == ExitCode.USAGE and "self-check" in res.stderr


def test_an_output_the_lab_cannot_keep_is_refused_before_booting(tmp_path):
    """The lab's root is a throwaway layer: an output there would vanish. Refused before the lab is even looked for."""
    env = dict(os.environ, KVMCTL_LAB_DIR=str(tmp_path / "no-lab"))  # booting would fail differently
    out = tmp_path / "out"
    res = kvmctl("lab", "--outdir", str(out), "--", "kvmctl", "experiment", "-o", str(tmp_path / "gone" / "r.json"),
                 env=env)
    assert res.returncode == ExitCode.USAGE, res.stderr
    assert res.stderr.count("\n") == 1 and "does not exist on the host" in res.stderr and "--outdir" in res.stderr
    assert not (tmp_path / "gone").exists()


def test_a_bad_stall_time_is_refused():
    res = kvmctl("lab", "--stall", "soon", "--", "kvmctl", "info")
    assert res.returncode == ExitCode.USAGE and "--stall" in res.stderr
