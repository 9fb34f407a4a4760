"""Shared helpers for tests that run real VMs on /dev/kvm.

Modules that create VMs set ``pytestmark = pytest.mark.kvm``; tests/conftest.py
skips them with the host probe's reason when /dev/kvm is not usable.
"""

from __future__ import annotations

import os


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
