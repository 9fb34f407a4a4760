"""MGLRU ager on a kernel that has CONFIG_LRU_GEN (the lab's; skipped here with the reason).

Follows access_tracking_perf_test's check: after an aging pass with
force_scan, the pages touched since the previous aging sit in the youngest
generation, the others stay in older ones. The memory is anonymous and
written by a child inside the experiment cgroup, so it is charged there (as
the selftest's guest memory is); aging walks anonymous memory because the
commands pass can_swap=1, even on hosts without swap.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from tests.helpers.agers import cold_file

from kvmctl.kvm import Memslot
from kvmctl.agers import AgerContext, get_ager
from kvmctl.probe.memory import LRU_GEN_ENABLED
from kvmctl.agers.residency import resident_pages
from kvmctl.cgroup import ExperimentCgroup

pytestmark = pytest.mark.root

SIZE = 32 << 20
PAGES = SIZE // 4096
HOT = PAGES // 4

# argv[1]: "anon" or a file path. Maps SIZE bytes, touches every page, prints
# the address; then "touch N" reads the first N pages again.
CHILD = textwrap.dedent("""
    import ctypes, mmap, os, sys
    sys.stdin.readline()                       # wait until moved into the cgroup
    source, size = sys.argv[1], int(sys.argv[2])
    if source == "anon":
        m = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_NOHUGEPAGE)        # 4 KiB folios: generations count single pages
        for off in range(0, size, mmap.PAGESIZE):
            m[off] = 1
    else:
        m = mmap.mmap(os.open(source, os.O_RDONLY), size, mmap.MAP_SHARED, mmap.PROT_READ)

    def touch(n):
        return sum(m[off] for off in range(0, n * mmap.PAGESIZE, mmap.PAGESIZE))

    touch(size // mmap.PAGESIZE)
    if source == "anon":
        print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    else:  # a read-only mapping exports no writable buffer: find it in maps
        line = next(l for l in open("/proc/self/maps") if l.rstrip().endswith(source))
        print(int(line.split("-")[0], 16), flush=True)
    for line in sys.stdin:
        touch(int(line.split()[1]))
        print("touched", flush=True)
""")



@pytest.fixture
def mglru():
    ager = get_ager("mglru")
    avail = ager.availability()
    if not avail.ok:
        pytest.skip(f"needs MGLRU: {avail.reason} (fix: {avail.remedy})")
    enabled_before = LRU_GEN_ENABLED.read_text()
    yield ager
    ager.restore()
    assert LRU_GEN_ENABLED.read_text() == enabled_before


class Child:
    def __init__(self, own, source: str):
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, source, str(SIZE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.cg = ExperimentCgroup.create("mglru", parent=own)
        self.cg.add_pid(self.proc.pid)
        self.hva = int(self.cmd("go"))
        backing, path = ("anon", None) if source == "anon" else ("file", source)
        self.ctx_slots = [Memslot.at(0, 0, SIZE, self.hva, backing, path)]

    def cmd(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.cg.remove()


def _pages(gens: list[dict], gen: int | None = None) -> int:
    return sum(g["nr_anon"] + g["nr_file"] for g in gens if gen is None or g["gen"] == gen)


def test_aging_moves_recently_touched_pages_to_the_youngest_generation(mglru, own):
    child = Child(own, "anon")
    try:
        mglru.prepare(AgerContext(child.cg, child.proc.pid, child.ctx_slots))
        first = mglru.run_pass(0)
        assert first.errors == [] and first.lru_gen_commands
        assert all(c.startswith("+ ") and c.endswith(" 1 1") for c in first.lru_gen_commands)
        max_before = max(g["gen"] for g in first.generations)

        assert child.cmd(f"touch {HOT}") == "touched"
        second = mglru.run_pass(1)
        assert second.errors == []
        # Aging moved what was touched into the generation the command named and opened a new one.
        aged_into = max_before
        assert second.lru_gen_commands[0].split()[3] == str(aged_into)
        assert max(g["gen"] for g in second.generations) == aged_into + 1
        young, total = _pages(second.generations, aged_into), _pages(second.generations)
        print(f"gen {aged_into}: {young} of {total} pages; touched {HOT} of {PAGES}; "
              f"cmds {second.lru_gen_commands}; notes {second.notes}")
        assert total >= 0.9 * PAGES
        assert 0.9 * HOT <= young <= HOT + 0.05 * PAGES
        assert second.pages_found_idle == total - young
    finally:
        child.close()


def test_eviction_takes_the_pages_unused_since_the_previous_pass(mglru, own, tmp_path):
    with cold_file(tmp_path, SIZE, seed=3) as path:
        child = Child(own, str(path))
        try:
            mglru.prepare(AgerContext(child.cg, child.proc.pid, child.ctx_slots, options={"evict": True}))
            mglru.run_pass(0)  # every page was read: all of them land in one generation
            assert child.cmd(f"touch {HOT}") == "touched"
            record = mglru.run_pass(1)  # the hot quarter moves on, the rest is older: evicted
            resident = resident_pages(path)
            print(f"eviction: {record.lru_gen_commands}, reclaimed {record.bytes_reclaimed} bytes, "
                  f"hot resident {resident[:HOT].mean():.3f}, cold resident {resident[HOT:].mean():.3f}")
            assert any(c.startswith("- ") for c in record.lru_gen_commands)
            assert record.bytes_reclaimed >= 0.5 * (SIZE - HOT * 4096)
            assert resident[:HOT].mean() >= 0.99
            assert resident[HOT:].mean() <= 0.1
        finally:
            child.close()
