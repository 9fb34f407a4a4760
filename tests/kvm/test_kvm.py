"""The KVM layer against the real /dev/kvm: Kvm, Vm, Vcpu, memslots, stats, backings."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kvmctl.errors import KvmIoctlError, UnsupportedError, UsageError
from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import Backing, BackingKind, Cap, Kvm, create_backing
from kvmctl.kvm import abi
from kvmctl.probe.memory import hugetlb_pool as pool_pages
from kvmctl.units import HUGE_1G, HUGE_2M, PAGE_SIZE
from tests.helpers.fds import FdLeakCheck, hugetlb_pool, kvm_fds

pytestmark = pytest.mark.kvm

MIB = 1 << 20
# Above RLIMIT_NOFILE, so no fd can ever have this number: every syscall on it is EBADF.
BAD_FD = resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1000


@pytest.fixture
def kvm():
    with Kvm() as k:
        yield k


# --- Kvm ----------------------------------------------------------------------------------------


def test_api_version_and_capabilities(kvm):
    assert kvm.api_version == abi.KVM_API_VERSION == 12
    assert kvm.vcpu_mmap_size >= PAGE_SIZE and kvm.vcpu_mmap_size % PAGE_SIZE == 0
    assert kvm.check_extension(Cap.USER_MEMORY) > 0
    assert kvm.check_extension(Cap.NR_MEMSLOTS) >= 32
    assert kvm.check_extension(Cap.BINARY_STATS_FD) > 0
    assert kvm.max_vcpus() >= kvm.check_extension(Cap.NR_VCPUS) >= 1
    assert kvm.check_extension(0xFFFF) == 0  # an unknown capability is 0, not an error


def test_supported_cpuid(kvm):
    entries = kvm.supported_cpuid()
    leaves = {e.function for e in entries}
    assert 0 in leaves and 1 in leaves and 0x80000000 in leaves
    leaf0 = next(e for e in entries if e.function == 0)
    vendor = b"".join(int(r).to_bytes(4, "little") for r in (leaf0.ebx, leaf0.edx, leaf0.ecx))
    assert vendor in (b"GenuineIntel", b"AuthenticAMD", b"HygonGenuine", b"CentaurHauls")
    ext = next(e for e in entries if e.function == 0x80000001)
    assert ext.edx & (1 << 29), "KVM must offer long mode (CPUID 0x80000001 EDX.LM)"


# --- the rust-vmm trick: objects around an fd that cannot exist fail every ioctl with EBADF ----


def _expect_ebadf(call):
    with pytest.raises(KvmIoctlError) as info:
        call()
    assert info.value.errno == errno.EBADF, info.value.message
    assert "Bad file descriptor" in info.value.message


def test_kvm_with_invalid_fd_fails_every_ioctl(kvm):
    real = kvm.fd
    kvm.fd = BAD_FD
    try:
        _expect_ebadf(lambda: kvm.check_extension(Cap.USER_MEMORY))
        _expect_ebadf(kvm.max_vcpus)
        _expect_ebadf(kvm.supported_cpuid)  # must not grow its buffer forever on EBADF
        _expect_ebadf(kvm.create_vm)
    finally:
        kvm.fd = real


def test_vm_with_invalid_fd_fails_every_ioctl(kvm):
    from kvmctl.kvm import Vm

    _expect_ebadf(lambda: Vm(kvm, BAD_FD))  # the constructor asks KVM_CAP_NR_MEMSLOTS
    with kvm.create_vm() as vm, create_backing("anon", 2 * MIB) as mem:
        real, vm.fd = vm.fd, BAD_FD
        try:
            _expect_ebadf(lambda: vm.check_extension(Cap.NR_MEMSLOTS))
            _expect_ebadf(lambda: vm.add_memslot(0, 0, mem))
            _expect_ebadf(lambda: vm.create_vcpu(0))
            _expect_ebadf(vm.stats)
            assert vm.memslots == [] and vm.vcpus == []  # nothing recorded for failed ioctls
        finally:
            vm.fd = real


VCPU_CALLS = {
    "get_regs": lambda c: c.get_regs(),
    "set_regs": lambda c: c.set_regs(abi.kvm_regs()),
    "get_sregs": lambda c: c.get_sregs(),
    "set_sregs": lambda c: c.set_sregs(abi.kvm_sregs()),
    "set_cpuid": lambda c: c.set_cpuid(c.vm.kvm.supported_cpuid()),
    "tsc_khz": lambda c: c.tsc_khz(),
    "run": lambda c: c.run(),
    "stats": lambda c: c.stats(),
}


@pytest.mark.parametrize("call", VCPU_CALLS.values(), ids=VCPU_CALLS.keys())
def test_vcpu_with_invalid_fd_fails_every_ioctl(kvm, call):
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        real, vcpu.fd = vcpu.fd, BAD_FD
        try:
            _expect_ebadf(lambda: call(vcpu))
            assert vcpu.register_snapshot() == {}  # used while failing: never raises
        finally:
            vcpu.fd = real


# --- memslots: what KVM would reject is caught before the ioctl ---------------------------------


@pytest.fixture
def vm_with_slot(kvm):
    """A VM with slot 0 at [0, 2 MiB), whose fd is then made invalid: any check that
    let a bad memslot through would reach the ioctl and fail with EBADF instead."""
    with kvm.create_vm() as vm, create_backing("anon", 2 * MIB) as mem, create_backing("thp", 2 * MIB) as thp:
        vm.add_memslot(0, 0, mem)
        real, vm.fd = vm.fd, BAD_FD
        try:
            yield vm, mem, thp
        finally:
            vm.fd = real


@pytest.mark.parametrize("case", [
    ("overlap", dict(slot=1, gpa=MIB)),
    ("overlap containing", dict(slot=1, gpa=0, size=4 * MIB, backing="big")),
    ("misaligned gpa", dict(slot=1, gpa=4 * MIB + 512)),
    ("misaligned size", dict(slot=1, gpa=4 * MIB, size=PAGE_SIZE + 512)),
    ("zero size", dict(slot=1, gpa=4 * MIB, size=0)),
    ("size beyond backing", dict(slot=1, gpa=4 * MIB, size=4 * MIB)),
    ("duplicate slot id", dict(slot=0, gpa=8 * MIB)),
    ("slot id beyond KVM_CAP_NR_MEMSLOTS", dict(slot="max", gpa=8 * MIB)),
    ("negative slot id", dict(slot=-1, gpa=8 * MIB)),
    ("thp gpa not 2 MiB aligned", dict(slot=1, gpa=4 * MIB + PAGE_SIZE, backing="thp")),
    ("beyond 52-bit guest-physical space", dict(slot=1, gpa=(1 << 52) - MIB)),
], ids=lambda c: c[0])
def test_memslot_errors_before_ioctl(vm_with_slot, case):
    vm, mem, thp = vm_with_slot
    _, kw = case
    slot = vm.max_memslots if kw["slot"] == "max" else kw["slot"]
    backing = {"thp": thp, None: mem}.get(kw.get("backing"), mem)
    if kw.get("backing") == "big":
        backing = Backing(BackingKind.ANON, 4 * MIB, mem.hva)  # never mapped or closed: only checked
    with pytest.raises(UsageError) as info:
        vm.add_memslot(slot, kw["gpa"], backing, size=kw.get("size"))
    assert info.value.hint, "every memslot error names a fix"
    assert len(vm.memslots) == 1


def test_valid_memslot_reaches_the_ioctl(vm_with_slot):
    """The control case: a correct memslot passes the checks (and hits the invalid fd)."""
    vm, mem, thp = vm_with_slot
    _expect_ebadf(lambda: vm.add_memslot(1, 4 * MIB, thp))


def test_memslot_add_and_remove(kvm):
    with kvm.create_vm() as vm, create_backing("anon", 2 * MIB) as a, create_backing("memfd", 2 * MIB) as b:
        vm.add_memslot(0, 0, a)
        vm.add_memslot(5, 2 * MIB, b)
        assert [m.slot for m in vm.memslots] == [0, 5]
        vm.remove_memslot(0)
        with pytest.raises(UsageError):
            vm.remove_memslot(0)
        vm.add_memslot(0, 0, a)  # the range and id are free again
        assert vm.memslots[-1].gpa_end == 2 * MIB


# --- binary stats ------------------------------------------------------------------------------


def test_vm_and_vcpu_stats_descriptors(kvm):
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        for stats, id_suffix in ((vm.stats(), f"kvm-{os.getpid()}"), (vcpu.stats(), "/vcpu-0")):
            assert stats.id.endswith(id_suffix) or stats.id.startswith(id_suffix), stats.id
            names = [d.name for d in stats.descriptors]
            assert len(names) == stats.header.num_desc > 0 and len(set(names)) == len(names)
            values = stats.read()
            assert set(values) == set(names)
            for d in stats.descriptors:
                assert isinstance(d.type, abi.StatType) and isinstance(d.unit, abi.StatUnit)
                if d.is_histogram:
                    assert isinstance(values[d.name], list) and len(values[d.name]) == d.size
        assert {"pages_4k", "remote_tlb_flush"} <= set(vm.stats().read())
        assert {"exits", "pf_fixed", "halt_exits"} <= set(vcpu.stats().read())


def test_stats_change_after_a_run():
    """pages_4k grows by exactly the pages touched plus a few system pages."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("THP is 'always' here: KVM may map anonymous guest memory with 2 MiB pages, "
                    "which pages_4k does not count")
    mem = 8 * MIB
    with GuestMachine(MachineSpec(mem, 1)) as m:
        vcpu_stats = m.vm.vcpus[0].stats()
        assert m.vm_stats()["pages_4k"] == 0  # nothing mapped before the guest runs
        exits0 = vcpu_stats.read()["exits"]
        m.start()  # runs up to the first PORT_SYNC: code, stack, mailbox pages
        system_pages = m.vm_stats()["pages_4k"]
        assert 0 < system_pages <= 16
        r = m.run_epoch(Pattern.parse("seq"), write=True)
        assert r.touches == mem // PAGE_SIZE
        grown = m.vm_stats()["pages_4k"] - system_pages
        # + a few: on TDP hosts the guest page-table pages its walks read get mapped too
        assert r.touches <= grown <= r.touches + 16, (grown, r.touches)
        assert vcpu_stats.read()["exits"] >= exits0 + 2  # two PORT_SYNC exits at least


# --- backings ----------------------------------------------------------------------------------


def _run_and_check(spec: MachineSpec, during=lambda: True) -> None:
    """Stamp every page, then every third again; ``during`` must hold while the guest memory is in use."""
    with GuestMachine(spec, epoch_timeout=60) as m:
        m.run_epoch(Pattern.parse("seq"), write=True)
        assert during()
        stride = Pattern.parse("stride:3")
        m.run_epoch(stride, write=True)
        expect = np.where(m.ground_truth(stride, 1), 2, 1)
        assert expect.sum() > expect.size  # some pages were stamped twice
        assert np.array_equal(m.stamps(), expect)
        m.finish()


@pytest.mark.parametrize("kind", ["anon", "file", "memfd", "thp"])
def test_backing_maps_and_runs(kind):
    _run_and_check(MachineSpec(8 * MIB, 2, backing=BackingKind(kind), memslots=2))


def test_temporary_file_backing_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("KVMCTL_TMPDIR", str(tmp_path))
    with create_backing("file", 2 * MIB) as b:
        assert b.path is None and b.fd >= 0
        assert os.readlink(f"/proc/self/fd/{b.fd}").endswith("(deleted)")
        assert list(tmp_path.iterdir()) == []  # unlinked while open
    _run_and_check(MachineSpec(4 * MIB, 1, backing=BackingKind.FILE))


def test_file_backing_at_given_path(tmp_path):
    path = tmp_path / "guest.mem"
    with GuestMachine(MachineSpec(4 * MIB, 1, backing=BackingKind.FILE, backing_path=str(path))) as m:
        assert m.data_memslots[0].path == str(path)
        m.run_epoch(Pattern.parse("seq"), write=True, epoch=6)
        m.finish()
    # the stamps went to the page cache of that file, which outlives the VM
    data = np.fromfile(path, dtype=np.uint64)
    assert data.size * 8 == 4 * MIB
    assert np.all(data[::512] == 7)


def test_thp_backing_is_huge_and_2m_guest_pages_map_2m():
    with GuestMachine(MachineSpec(8 * MIB, 1, backing=BackingKind.THP, guest_page=HUGE_2M)) as m:
        assert m.backings[0].hva % HUGE_2M == 0
        m.run_epoch(Pattern.parse("seq"), write=True)
        assert np.all(m.stamps() == 1)
        assert m.vm_stats()["pages_2m"] >= 1, "2 MiB guest pages over THP should give 2 MiB mappings"


@pytest.mark.parametrize("kind,page", [("hugetlb", HUGE_2M), ("hugetlb1g", HUGE_1G)])
def test_hugetlb_without_reserved_pages_is_unsupported(kind, page):
    if pool_pages(page)[0]:
        pytest.skip(f"{page >> 20} MiB hugetlb pages are reserved here; the no-pages error cannot be shown")
    before = kvm_fds()
    with pytest.raises(UnsupportedError) as info:
        GuestMachine(MachineSpec(page, 1, backing=BackingKind(kind)))
    assert "no pages are reserved" in info.value.message
    assert "nr_hugepages" in info.value.hint
    assert kvm_fds() == before


@pytest.mark.root
@pytest.mark.parametrize("kind,page", [("hugetlb", HUGE_2M), ("hugetlb1g", HUGE_1G)])
def test_hugetlb_backing_runs(kind, page):
    """The test reserves its own pages (and gives them back): the backing really maps hugetlb memory."""
    size = max(page, 4 * MIB)
    with hugetlb_pool(page, size // page):
        free = pool_pages(page)[1]
        _run_and_check(MachineSpec(size, 1, backing=BackingKind(kind)),
                       during=lambda: pool_pages(page)[1] == free - size // page)
        assert pool_pages(page)[1] == free, "the pages went back to the pool with the VM"


def test_unknown_backing_kind():
    with pytest.raises(UsageError) as info:
        BackingKind.parse("nope")
    assert "anon|file|memfd|thp|hugetlb|hugetlb1g" in info.value.hint


# --- every fd and mapping is released ----------------------------------------------------------


def test_context_managers_close_every_fd():
    with FdLeakCheck():
        with Kvm() as kvm, kvm.create_vm() as vm, create_backing("memfd", 2 * MIB) as mem:
            vm.add_memslot(0, 0, mem)
            for i in range(2):
                vm.create_vcpu(i).stats().read()
            vm.stats().read()
            assert len(kvm_fds()) >= 1 + 1 + 2 * 2 + 1  # kvm, vm, 2 x (vcpu + its mmap dup), vm stats


def test_guest_machine_closes_every_fd():
    with FdLeakCheck():
        with GuestMachine(MachineSpec(4 * MIB, 2, backing=BackingKind.FILE, memslots=2)) as m:
            m.run_epoch(Pattern.parse("seq"))
            m.vm_stats()
            [v.stats().read() for v in m.vm.vcpus]
            m.finish()
        with GuestMachine(MachineSpec(2 * MIB, 1, backing=BackingKind.MEMFD)):
            pass  # never started: the vCPU threads are parked and must still be reaped


def test_failed_construction_closes_every_fd():
    with FdLeakCheck(), Kvm() as kvm:
        limit = kvm.create_vm()
        slots = limit.max_memslots
        limit.close()
        with pytest.raises(UsageError):
            GuestMachine(MachineSpec(2 * MIB * slots, 1, memslots=slots), kvm=kvm)


def test_backing_close_unmaps():
    b = create_backing("anon", 2 * MIB)
    start = b.hva
    b.view(np.uint64)[0] = 1
    b.close()
    maps = open("/proc/self/maps").read()
    assert f"{start:x}-" not in maps


def test_machine_off_the_main_thread_does_not_kill_the_process():
    """Without a SIGUSR1 handler (installed only from the main thread), closing must not
    signal the vCPU threads: SIGUSR1's default action would end the whole process."""
    code = (
        "import threading\n"
        "from kvmctl.guest.machine import GuestMachine, MachineSpec\n"
        "from kvmctl.guest.patterns import Pattern\n"
        "def work():\n"
        "    with GuestMachine(MachineSpec(2 << 20, 2)) as m:\n"
        "        m.run_epoch(Pattern.parse('seq'))\n"
        "t = threading.Thread(target=work)\n"
        "t.start()\n"
        "t.join()\n"
        "print('survived')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "survived", (p.returncode, p.stderr[-500:])


def test_file_backing_that_cannot_hold_memory():
    """A path that opens but cannot be sized (procfs) is a usage error, not an OSError."""
    with pytest.raises(UsageError) as info:
        create_backing("file", 2 * MIB, path="/proc/version")
    assert "/proc/version" in info.value.message and info.value.hint
