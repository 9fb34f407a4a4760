"""A full experiment leaves its neighbours alone: the foreign kdamond and a sibling cgroup.

The test reads the foreign kdamond's state (read-only: state, pid, contexts,
targets and schemes counts) and creates a sibling cgroup of its own below our
memcg with limits it sets, runs a complete traced experiment (memcg ager: it
squeezes its own cgroup), and proves all of it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmctl.cgroup import CgroupVersion, own_memcg
from tests.helpers.hoststate import HostState, assert_nothing_left, damon_state, run_kvmctl

pytestmark = [pytest.mark.kvm, pytest.mark.bpf, pytest.mark.root, pytest.mark.slow]

MIB = 1 << 20


@pytest.fixture
def sibling():
    """A cgroup of the test's own, beside where kvmctl creates its cgroups, with limits the test chose."""
    parent = own_memcg()
    path = parent.path / f"reliability-sibling-{os.getpid()}"
    path.mkdir()
    try:
        if parent.version is CgroupVersion.V1:
            knobs = {"memory.limit_in_bytes": str(300 * MIB), "memory.soft_limit_in_bytes": str(200 * MIB)}
        else:
            knobs = {"memory.max": str(300 * MIB), "memory.high": str(200 * MIB)}
        for name, value in knobs.items():
            (path / name).write_text(value)
        yield path, knobs
    finally:
        path.rmdir()


def _read(path: Path, names) -> dict[str, str]:
    return {n: (path / n).read_text().strip() for n in names}


def test_foreign_kdamond_and_sibling_cgroup_untouched(tmp_path, sibling):
    path, knobs = sibling
    damon_before = damon_state()
    sibling_before = _read(path, list(knobs) + ["cgroup.procs", "memory.usage_in_bytes"
                                                if (path / "memory.usage_in_bytes").exists() else "memory.current"])
    assert all(sibling_before[k] == v for k, v in knobs.items())
    host_before = HostState.capture()

    out = tmp_path / "r.json"
    o = run_kvmctl(["experiment", "--mem", "128M", "--passes", "2", "-q", "-o", str(out)], tmp_path, timeout=240)
    assert o.returncode == 0, o.stderr
    report = json.loads(out.read_text())
    assert report["complete"] and report["passes"]

    assert damon_state() == damon_before
    if damon_before:  # the foreign kdamond was not only left alone but kept running (it aged our guest too)
        assert damon_before.get("0/state") == "on"
        kd = [t for t in report["aging"]["by_task"] if t["class"] == "kdamond"]
        assert kd, "the running kdamond's aging of the guest should show up as background"
    assert path.is_dir()
    after = _read(path, sibling_before)
    for k in knobs:
        assert after[k] == sibling_before[k], k
    assert after["cgroup.procs"] == sibling_before["cgroup.procs"] == ""
    assert_nothing_left(o, tmp_path, host_before)
