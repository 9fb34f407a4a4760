"""Shared helpers for tests that run real VMs on /dev/kvm.

The skip reason comes from kvmctl's own error (message and hint), so a test
skipped here says exactly what the host lacks and how to fix it.
"""

from __future__ import annotations

import os

import pytest

from kvmctl.errors import KvmctlError


def kvm_unusable_reason() -> str | None:
    """None when a VM can be created here; otherwise why not."""
    from kvmctl.kvm import Kvm

    try:
        with Kvm() as kvm, kvm.create_vm():
            return None
    except KvmctlError as err:
        return err.one_line()


KVM_REASON = kvm_unusable_reason()
# Apply with `pytestmark = KVM_MARKS` in every module that creates VMs.
KVM_MARKS = [pytest.mark.kvm, pytest.mark.skipif(KVM_REASON is not None, reason=f"needs /dev/kvm: {KVM_REASON}")]


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
