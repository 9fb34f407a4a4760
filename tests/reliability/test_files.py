"""Report files through the CLI: atomic, 0644, owned by the sudo user, never through a planted symlink.

tests/unit/test_report_model.py covers write_atomic itself; these run
`kvmctl experiment` end to end, including a symlink planted at the output
path while the experiment is already running (after its up-front path check).
"""

from __future__ import annotations

import json
import stat

import pytest

from kvmctl.errors import ExitCode
from tests.helpers.hoststate import (
    assert_nothing_left,
    assert_one_line_error,
    kvmctl_cmd,
    private_env,
    run_kvmctl,
    run_until_line,
)

pytestmark = [pytest.mark.kvm, pytest.mark.root]
SMALL = ["experiment", "--mem", "64M", "--passes", "1", "--no-trace"]


def test_report_is_0644_and_owned_by_the_sudo_user(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("an older report")  # replaced as a whole, never edited in place
    old_inode = out.stat().st_ino
    env = private_env(tmp_path / "tmp", SUDO_UID="65534", SUDO_GID="65534")
    o = run_kvmctl(SMALL + ["-q", "-o", str(out)], tmp_path, env=env)
    assert o.returncode == 0, o.stderr
    st = out.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o644
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert st.st_ino != old_inode, "the report must be a new file renamed into place"
    assert json.loads(out.read_text())["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "tmp"], "a temporary report file was left"
    assert_nothing_left(o, tmp_path)


def test_symlink_at_the_output_path_is_refused_up_front(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "r.json"
    out.symlink_to(victim)
    o = run_kvmctl(SMALL + ["-o", str(out)], tmp_path)
    assert_one_line_error(o, ExitCode.USAGE, "symbolic link")
    assert victim.read_text() == "precious" and out.is_symlink()
    assert o.seconds < 30, "refused before the run, not after it"
    assert_nothing_left(o, tmp_path)


def test_symlink_planted_during_the_run_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "r.json"
    # the link appears after kvmctl checked the path, before it writes
    o = run_until_line(kvmctl_cmd(*SMALL, "--passes", "2", "-o", str(out)), tmp_path, "pass 1/",
                       lambda proc: out.symlink_to(victim), timeout=90)
    assert_one_line_error(o, ExitCode.USAGE, "refusing to write", "symbolic link")
    assert victim.read_text() == "precious" and out.is_symlink()
    assert not list(tmp_path.glob(".r.json.*")), "a temporary report file was left"
    assert_nothing_left(o, tmp_path)
