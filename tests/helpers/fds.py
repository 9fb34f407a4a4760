"""Shared helpers for tests that run real VMs on /dev/kvm.

Modules that create VMs set ``pytestmark = pytest.mark.kvm``; tests/conftest.py
skips them with the host probe's reason when /dev/kvm is not usable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kvmctl.probe.memory import hugetlb_dir


def open_fds() -> set[int]:
    """This process's open file descriptors."""
    return {int(n) for n in os.listdir("/proc/self/fd")}


def fd_targets(fds: set[int]) -> dict[int, str]:
    out = {}
    for fd in fds:
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # closed between listing and reading (the listdir fd itself)
    return out


class FdLeakCheck:
    """Context manager: fail if any fd opened inside stays open."""

    def __enter__(self):
        self.before = open_fds()
        return self

    def __exit__(self, *exc):
        leaked = fd_targets(open_fds() - self.before)
        assert not leaked, f"file descriptors left open: {leaked}"


def kvm_fds() -> dict[int, str]:
    """Open fds that are KVM objects (anon_inode:kvm-vm, kvm-vcpu, /dev/kvm, stats)."""
    return {fd: t for fd, t in fd_targets(open_fds()).items() if "kvm" in t}


@contextmanager
def hugetlb_pool(page_size: int, pages: int) -> Iterator[None]:
    """``pages`` more pages in the host's hugetlb pool for the block, the pool as it was afterwards.

    A kernel knob: restored on errors and on Ctrl-C (KeyboardInterrupt unwinds
    through here). Skips when the kernel cannot find that much contiguous memory.
    """
    knob = hugetlb_dir(page_size) / "nr_hugepages"
    if not knob.exists():
        pytest.skip(f"this kernel has no {page_size >> 20} MiB hugetlb pool ({knob} is absent)")
    if not os.access(knob, os.W_OK):
        pytest.skip(f"cannot write {knob}: run the tests as root to reserve hugetlb pages")
    before = int(knob.read_text())
    try:
        knob.write_text(str(before + pages))
        got = int(knob.read_text()) - before
        if got < pages:
            pytest.skip(f"the kernel found {got} of {pages} free {page_size >> 20} MiB pages to reserve "
                        "(memory too fragmented); reserve them at boot with hugepages= on the kernel command line")
        yield
    finally:
        knob.write_text(str(before))
