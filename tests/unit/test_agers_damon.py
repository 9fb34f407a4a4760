"""DAMON ager decisions on fake sysfs trees: refuse on any foreign kdamond, write only our own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kvmctl import cleanup
from kvmctl.agers import AgerContext
from kvmctl.agers.damon import DamonAger, DamonRegion, young_pages
from kvmctl.probe.memory import foreign_kdamonds
from kvmctl.kvm import Memslot
from kvmctl.errors import KvmctlError, UnsupportedError


@pytest.fixture(autouse=True)
def root_and_clean_stack(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    yield
    assert cleanup.run_all() == []


KDAMOND_FILES = [
    "state", "pid",
    "contexts/nr_contexts", "contexts/0/operations",
    "contexts/0/monitoring_attrs/intervals/sample_us", "contexts/0/monitoring_attrs/intervals/aggr_us",
    "contexts/0/targets/nr_targets", "contexts/0/targets/0/pid_target",
    "contexts/0/targets/0/regions/nr_regions",
    "contexts/0/targets/0/regions/0/start", "contexts/0/targets/0/regions/0/end",
    "contexts/0/schemes/nr_schemes", "contexts/0/schemes/0/action",
    *[f"contexts/0/schemes/0/access_pattern/{k}/{b}" for k in ("sz", "nr_accesses", "age") for b in ("min", "max")],
]


def make_tree(root: Path, nr_kdamonds: int, state: str = "off", pid: str = "-1") -> Path:
    """A DAMON admin tree; kdamonds/0 exists with every file our setup writes."""
    admin = root / "admin"
    k = admin / "kdamonds" / "0"
    for rel in KDAMOND_FILES:
        (k / rel).parent.mkdir(parents=True, exist_ok=True)
        (k / rel).write_text("0\n")
    (k / "contexts/0/schemes/0/tried_regions").mkdir(parents=True)
    (k / "state").write_text(state + "\n")
    (k / "pid").write_text(pid + "\n")
    (admin / "kdamonds" / "nr_kdamonds").write_text(f"{nr_kdamonds}\n")
    return admin


def snapshot(tree: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in tree.rglob("*") if p.is_file()}


CTX_SLOTS = [Memslot.at(0, 0, 16 * 4096, 0x7F0000000000)]


def test_no_kdamond_means_none_foreign(tmp_path):
    assert foreign_kdamonds(make_tree(tmp_path, 0)) == []


def test_running_foreign_kdamond_is_described(tmp_path):
    admin = make_tree(tmp_path, 1, "on", "76")
    assert foreign_kdamonds(admin) == ["kdamonds/0 (state on, pid 76)"]


def test_a_configured_but_stopped_kdamond_is_foreign_too(tmp_path):
    # nr_kdamonds > 0 at start: someone set it up, even if it is off now.
    assert foreign_kdamonds(make_tree(tmp_path, 1, "off")) == ["kdamonds/0 (state off, pid -1)"]


def test_refusal_writes_nothing(tmp_path):
    admin = make_tree(tmp_path, 1, "on", "76")
    before = snapshot(admin)
    ager = DamonAger(admin)
    avail = ager.availability()
    assert not avail.ok and "pid 76" in avail.reason and "never touches" in avail.remedy
    with pytest.raises(UnsupportedError):
        ager.prepare(AgerContext(None, 1234, CTX_SLOTS))
    ager.restore()
    assert snapshot(admin) == before


def test_write_guard_refuses_paths_outside_our_kdamond(tmp_path):
    admin = make_tree(tmp_path, 1, "on", "76")
    ager = DamonAger(admin)
    with pytest.raises(KvmctlError):
        ager._write(admin / "kdamonds" / "0" / "state", "off")


def test_own_kdamond_lifecycle(tmp_path):
    admin = make_tree(tmp_path, 0, "off", "-1")
    ager = DamonAger(admin)
    assert ager.availability().ok
    k = admin / "kdamonds" / "0"
    (k / "pid").write_text("4242\n")  # what the kernel shows once "on" is written
    ager.prepare(AgerContext(None, 1234, CTX_SLOTS, options={"pass_s": 0}))
    assert (admin / "kdamonds" / "nr_kdamonds").read_text() == "1"
    c = k / "contexts" / "0"
    assert (c / "operations").read_text() == "vaddr"
    assert (c / "targets/0/pid_target").read_text() == "1234"
    assert (c / "targets/0/regions/0/start").read_text() == str(0x7F0000000000)
    assert (c / "targets/0/regions/0/end").read_text() == str(0x7F0000000000 + 16 * 4096)
    assert (c / "schemes/0/action").read_text() == "stat"
    assert (k / "state").read_text() == "on"

    # The kernel fills tried_regions on update_schemes_tried_regions: pages 0-3 accessed, 4-9 not.
    tried = c / "schemes/0/tried_regions"
    for i, (start, end, acc) in enumerate([(0, 4, 3), (4, 10, 0)]):
        d = tried / str(i)
        d.mkdir()
        for name, val in (("start", 0x7F0000000000 + start * 4096), ("end", 0x7F0000000000 + end * 4096),
                          ("nr_accesses", acc), ("age", 1)):
            (d / name).write_text(f"{val}\n")
    rec = ager.run_pass(0)
    assert (k / "state").read_text() == "update_schemes_tried_regions"
    assert rec.thread_ids == [4242]
    assert rec.observed.tolist() == [True] * 10 + [False] * 6
    assert rec.idle.tolist() == [False] * 4 + [True] * 6 + [False] * 6

    ager.restore()
    ager.restore()
    assert (k / "state").read_text() == "off"
    assert (admin / "kdamonds" / "nr_kdamonds").read_text() == "0"


def test_restore_leaves_a_kdamond_that_changed_hands(tmp_path):
    admin = make_tree(tmp_path, 0)
    k = admin / "kdamonds" / "0"
    (k / "pid").write_text("4242\n")
    ager = DamonAger(admin)
    ager.prepare(AgerContext(None, 1234, CTX_SLOTS))
    (k / "pid").write_text("999\n")  # someone else restarted it meanwhile
    with pytest.raises(KvmctlError):
        ager.restore()
    assert (k / "state").read_text() == "on"


def test_young_pages_from_regions():
    hvas = np.arange(0, 8 * 4096, 4096, dtype=np.uint64)
    young, observed = young_pages(hvas, [DamonRegion(0, 2 * 4096, 5, 0), DamonRegion(2 * 4096, 6 * 4096, 0, 9)])
    assert young.tolist() == [True, True] + [False] * 6
    assert observed.tolist() == [True] * 6 + [False] * 2


def test_absent_damon_sysfs(tmp_path):
    avail = DamonAger(tmp_path / "none").availability()
    assert not avail.ok and "CONFIG_DAMON_SYSFS" in avail.remedy
