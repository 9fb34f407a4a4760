"""Real memory cgroups on this host: squeeze a file-backed mapping and check the kernel's work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.agers import cold_file

from kvmctl import cleanup
from kvmctl.kvm import Memslot
from kvmctl.agers import AgerContext, get_ager
from kvmctl.agers.residency import resident_pages
from kvmctl.cgroup import CgroupVersion, ExperimentCgroup, parse_proc_cgroup

pytestmark = pytest.mark.root

SIZE = 64 << 20

# Maps the file shared (as a file-backed guest memslot is), reads every page,
# reports the mapping's address, then holds the mapping until stdin closes.
CHILD = textwrap.dedent("""
    import mmap, os, sys
    sys.stdin.readline()                       # wait until moved into the cgroup
    fd = os.open(sys.argv[1], os.O_RDONLY)
    m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    total = sum(m[off] for off in range(0, len(m), mmap.PAGESIZE))
    maps = open("/proc/self/maps").read().splitlines()
    print(int(next(l for l in maps if l.endswith(sys.argv[1])).split("-")[0], 16), flush=True)
    sys.stdin.readline()
""")


@pytest.fixture
def backing(tmp_path) -> Iterator[Path]:
    with cold_file(tmp_path, SIZE, seed=1) as path:
        yield path


@pytest.fixture
def reader(backing, own):
    """(cgroup, child Popen, hva): a child in a fresh cgroup with the whole file mapped and read."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(backing)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        cg = ExperimentCgroup.create("squeeze", parent=own)
        cg.add_pid(child.pid)
        assert cg.pids() == [child.pid]
        child.stdin.write("go\n")
        child.stdin.flush()
        hva = int(child.stdout.readline())
        yield cg, child, hva
        cg.remove()
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_create_add_stat_remove(own):
    cg = ExperimentCgroup.create("basic", parent=own)
    assert cg.path.parent == own.path and cg.path.is_dir()
    assert cg.name == f"kvmctl-{os.getpid()}-basic"
    assert cg.limit_bytes() is None
    assert "cache" in cg.stat() or "file" in cg.stat()
    cg.remove()
    cg.remove()
    assert not cg.path.exists()


def test_two_experiments_never_collide(own):
    a = ExperimentCgroup.create("a", parent=own)
    b = ExperimentCgroup.create("b", parent=own)
    a.set_limit(64 << 20)
    assert b.limit_bytes() is None
    a.remove()
    b.remove()


def test_memcg_ager_squeezes_file_pages_out_and_restores_the_limit(reader, backing):
    cg, child, hva = reader
    assert resident_pages(backing).mean() > 0.99
    usage = cg.usage_bytes()
    assert usage >= 0.9 * SIZE

    ager = get_ager("memcg")
    assert ager.availability().ok
    ager.prepare(AgerContext(cg, child.pid, [Memslot.at(0, 0, SIZE, hva, "file", str(backing))], options={"squeeze": 0.5}))
    record = ager.run_pass(0)
    ager.restore()

    resident = resident_pages(backing)
    assert record.bytes_requested == pytest.approx(usage / 2, rel=0.01)
    assert record.bytes_reclaimed >= 0.4 * usage, record
    # v1 usage also counts the child's own pages; v2 reclaim may overshoot a little
    assert 0.1 < resident.mean() < 0.6, f"{resident.mean():.3f} of the file is still resident"
    assert record.thread_ids == [threading.get_native_id()]
    assert record.start_ns < record.end_ns
    if cg.version is CgroupVersion.V1:
        limits = [s["value"] for s in record.limit_steps]
        assert limits == sorted(limits, reverse=True) and len(limits) == 8
        assert limits[-1] <= usage - record.bytes_requested + 4096
    assert cg.limit_bytes() is None  # the original (unlimited) limit is back
    # The child still has the whole file mapped: reading evicted pages faults them back in.
    assert child.poll() is None


def test_remove_moves_remaining_processes_to_the_parent(reader, own):
    cg, child, _ = reader
    cg.remove()
    assert not cg.path.exists()
    moved = parse_proc_cgroup(Path(f"/proc/{child.pid}/cgroup").read_text())
    key = "memory" if own.version is CgroupVersion.V1 else ""
    assert moved[key] == own.rel


def test_a_limit_set_on_purpose_survives_a_squeeze(reader):
    cg, _, _ = reader
    cap = cg.usage_bytes() + (16 << 20)
    cg.set_limit(cap)
    cg.reclaim(8 << 20, steps=2)
    assert cg.limit_bytes() == cap // 4096 * 4096
    cg.restore_limit()
    assert cg.limit_bytes() is None


def test_cleanup_on_exception_restores_limit_and_removes_cgroup(own):
    with pytest.raises(RuntimeError):
        try:
            cg = ExperimentCgroup.create("boom", parent=own)
            cg.set_limit(32 << 20)
            raise RuntimeError("experiment failed half way")
        finally:
            assert cleanup.run_all() == []
    assert not cg.path.exists()


SIGNALLED = textwrap.dedent("""
    import os, signal, sys, time
    from kvmctl.cgroup import ExperimentCgroup
    from kvmctl.errors import Interrupted

    def on_signal(signum, frame):   # what kvmctl.cli installs
        raise Interrupted(signum)

    signal.signal(signal.SIGTERM, on_signal)
    cg = ExperimentCgroup.create("sig")
    cg.add_pid(os.getpid())         # removal must move us out first
    cg.set_limit(512 << 20)
    print(cg.path, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_signal_leaves_no_cgroup(own, signum):
    proc = subprocess.Popen([sys.executable, "-c", SIGNALLED], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    path = Path(proc.stdout.readline().strip())
    assert path.parent == own.path and path.is_dir()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode != 0 and "Interrupted" in err
    for _ in range(50):
        if not path.exists():
            break
        time.sleep(0.05)
    assert not path.exists(), f"{path} left behind"


def test_stale_cgroups_of_dead_kvmctl_processes_are_found_and_removed(own):
    from kvmctl.cgroup import remove_stale, stale_cgroups

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = own.path / f"kvmctl-{dead.pid}-crashed"
    stale.mkdir()  # what a SIGKILLed kvmctl leaves behind
    live = ExperimentCgroup.create("alive", parent=own)
    try:
        found = [m.path for m in stale_cgroups(own)]
        assert stale in found and live.path not in found
        removed, _ = remove_stale(own)
        assert own.child(stale.name).rel in removed
        assert not stale.exists() and live.path.exists()
    finally:
        if stale.exists():
            stale.rmdir()
        live.remove()
