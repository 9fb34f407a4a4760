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
