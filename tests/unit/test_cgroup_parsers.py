"""kvmctl.cgroup: parsing of /proc/<pid>/cgroup and mountinfo, knob handling on a fake v2 tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmctl import cleanup
from kvmctl.cgroup import (
    CgroupVersion,
    ExperimentCgroup,
    Memcg,
    kvmctl_children,
    locate_memcg,
    parse_memory_stat,
    parse_mountinfo,
    parse_proc_cgroup,
)
from kvmctl.errors import UnsupportedError, UsageError

HYBRID_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/6da4
2:cpu,cpuacct:/
0::/
"""
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_CGROUP = "0::/user.slice/user-0.slice/session-3.scope\n"
V2_MOUNTINFO = "30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_proc_cgroup_maps_every_controller():
    paths = parse_proc_cgroup(HYBRID_CGROUP)
    assert paths["memory"] == "/process_api/6da4"
    assert paths["cpu"] == paths["cpuacct"] == "/"
    assert paths[""] == "/"
    assert "name=systemd" in paths


def test_mountinfo_fields_and_escapes():
    (m,) = parse_mountinfo(r"40 31 0:36 /a\040b /mnt/with\040space rw shared:1 - cgroup cgroup rw,memory" + "\n")
    assert m.root == "/a b" and m.mountpoint == "/mnt/with space"
    assert m.fstype == "cgroup" and "memory" in m.super_options


def test_v1_memory_controller_wins_in_a_hybrid_layout():
    memcg = locate_memcg(HYBRID_CGROUP, HYBRID_MOUNTINFO)
    assert memcg == Memcg(CgroupVersion.V1, Path("/sys/fs/cgroup/memory/process_api/6da4"), "/process_api/6da4")


def test_v2_unified():
    memcg = locate_memcg(V2_CGROUP, V2_MOUNTINFO)
    assert memcg.version is CgroupVersion.V2
    assert memcg.path == Path("/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope")


def test_bind_mounted_subtree_is_resolved_against_the_mount_root():
    # A container sees only its own subtree mounted at /sys/fs/cgroup/memory.
    mountinfo = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    memcg = locate_memcg("4:memory:/docker/abc/inner\n", mountinfo)
    assert memcg.path == Path("/sys/fs/cgroup/memory/inner")
    assert memcg.rel == "/docker/abc/inner"


def test_missing_memory_mount_is_unsupported_with_a_remedy():
    with pytest.raises(UnsupportedError) as exc:
        locate_memcg(HYBRID_CGROUP, V2_MOUNTINFO)
    assert "mount" in (exc.value.hint or "")


def test_no_memory_cgroup_at_all():
    with pytest.raises(UnsupportedError):
        locate_memcg("1:cpu:/\n", HYBRID_MOUNTINFO)


def test_child_paths():
    parent = Memcg(CgroupVersion.V1, Path("/cg/a"), "/a")
    assert parent.child("b") == Memcg(CgroupVersion.V1, Path("/cg/a/b"), "/a/b")
    root = Memcg(CgroupVersion.V2, Path("/cg"), "/")
    assert root.child("b").rel == "/b"


def test_memory_stat():
    stat = parse_memory_stat("cache 160075776\nrss 1740800\nbogus line here\nworkingset_refault_file 44046\n")
    assert stat == {"cache": 160075776, "rss": 1740800, "workingset_refault_file": 44046}


@pytest.mark.parametrize("tag", ["", "a/b", "../x", "a b", "x" * 65])
def test_bad_tags_are_refused_before_touching_the_host(tag):
    with pytest.raises(UsageError):
        ExperimentCgroup.create(tag, parent=Memcg(CgroupVersion.V2, Path("/nonexistent"), "/"))


def _fake_v2_child(tmp_path: Path, tag: str) -> ExperimentCgroup:
    parent = Memcg(CgroupVersion.V2, tmp_path, "/test")
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory\n")
    cg = ExperimentCgroup.create(tag, parent=parent)
    for knob, value in (("memory.max", "max\n"), ("memory.current", "8192\n"), ("cgroup.procs", "")):
        (cg.path / knob).write_text(value)
    return cg


def test_limit_is_remembered_and_restored_on_a_fake_v2_tree(tmp_path):
    cg = _fake_v2_child(tmp_path, "lim")
    assert cg.name.startswith("kvmctl-") and cg.name.endswith("-lim")
    assert cg.rel == f"/test/{cg.name}"
    assert kvmctl_children(cg.parent) == [cg.name]
    assert cg.limit_bytes() is None
    cg.set_limit(100 << 20)
    assert (cg.path / "memory.max").read_text() == str(100 << 20)
    cg.set_limit(50 << 20)
    assert cg.limit_bytes() == 50 << 20
    cg.restore_limit()
    assert (cg.path / "memory.max").read_text() == "max"
    assert cg.usage_bytes() == 8192
    # cleanup still holds the removal; a fake directory with files cannot be rmdir'ed
    for f in cg.path.iterdir():
        f.unlink()
    cg.remove()
    assert not cg.path.exists() and cleanup.pending() == []


def test_same_tag_twice_is_a_usage_error(tmp_path):
    cg = _fake_v2_child(tmp_path, "dup")
    with pytest.raises(UsageError):
        ExperimentCgroup.create("dup", parent=cg.parent)
    for f in cg.path.iterdir():
        f.unlink()
    cg.remove()


def test_removed_cgroup_refuses_further_use(tmp_path):
    cg = _fake_v2_child(tmp_path, "gone")
    for f in cg.path.iterdir():
        f.unlink()
    cg.remove()
    cg.remove()  # idempotent
    with pytest.raises(UsageError):
        cg.set_limit(1 << 20)


def test_v2_without_memory_delegation_is_unsupported(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    with pytest.raises(UnsupportedError) as exc:
        ExperimentCgroup.create("x", parent=Memcg(CgroupVersion.V2, tmp_path, "/user.slice"))
    assert "subtree_control" in (exc.value.hint or "")
    assert list(tmp_path.iterdir()) == [tmp_path / "cgroup.subtree_control"]


def test_v2_root_cgroup_gets_memory_enabled_and_disabled_again(tmp_path):
    control = tmp_path / "cgroup.subtree_control"
    control.write_text("")
    (tmp_path / "cgroup.procs").write_text("")
    cg = ExperimentCgroup.create("root", parent=Memcg(CgroupVersion.V2, tmp_path, "/"))
    assert control.read_text() == "+memory"
    assert cg.rel == f"/{cg.name}"
    assert cleanup.run_all() == []  # removes the (empty) child, then undoes the delegation
    assert not cg.path.exists()
    assert control.read_text() == "-memory"
