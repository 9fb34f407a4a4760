"""`kvmctl watch` refuses what it cannot watch in one line, with the exit code the README gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.helpers.hoststate import ERROR_RE, kvmctl_cmd


def _watch(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(kvmctl_cmd("watch", *args, "-o", str(tmp_path / "w.json"), "-q"), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.root
def test_a_process_that_is_not_a_vm(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        run = _watch("--pid", str(sleeper.pid), tmp_path=tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run.returncode == 2, run.stderr
    assert ERROR_RE.match(run.stderr.strip()) and "is not a KVM process" in run.stderr
    assert not (tmp_path / "w.json").exists()  # nothing measured, nothing written


def test_a_pid_that_does_not_exist(tmp_path):
    run = _watch("--pid", str(2 ** 22 + 7), tmp_path=tmp_path)
    assert run.returncode == 2 and ERROR_RE.match(run.stderr.strip()), run.stderr
    assert "does not exist" in run.stderr


def test_bad_flags(tmp_path):
    run = _watch("--pid", str(os.getpid()), "--interval", "soon", tmp_path=tmp_path)
    assert run.returncode == 2 and "is not a duration" in run.stderr and len(run.stderr.strip().splitlines()) == 1


@pytest.mark.root
def test_a_process_we_may_not_read(tmp_path):
    """As user nobody, a root process's descriptors are hidden: one line, the permission exit code."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("needs setpriv (util-linux) to drop to user nobody")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*drop, *kvmctl_cmd("--help")], capture_output=True, timeout=60).returncode != 0:
        pytest.skip("user nobody cannot run kvmctl from this checkout (its directories are not world-readable)")
    with tempfile.TemporaryDirectory() as out:
        os.chmod(out, 0o777)  # nobody may write the report there: the refusal must come from /proc
        run = subprocess.run([*drop, *kvmctl_cmd("watch", "--pid", str(os.getpid()), "-q", "-o", f"{out}/w.json")],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 5 and ERROR_RE.match(run.stderr.strip()), run.stderr
    assert f"cannot list /proc/{os.getpid()}/fd: permission denied" in run.stderr
