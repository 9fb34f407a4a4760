"""`Kvm`: the /dev/kvm system fd (API version, capabilities, CPUID)."""

from __future__ import annotations

import ctypes
import errno
import os

from kvmctl.errors import KvmIoctlError, PermissionDeniedError, UnsupportedError
from kvmctl.kvm import abi
from kvmctl.kvm.fd import FdOwner, ioctl

KVM_DEVICE = "/dev/kvm"


class Kvm(FdOwner):
    """The KVM system fd. Use as a context manager, or call :meth:`close`."""

    def __init__(self, device: str = KVM_DEVICE):
        try:
            self.fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnsupportedError(
                f"{device} does not exist",
                "load the KVM modules (modprobe kvm_intel or kvm_amd) on a host with virtualization enabled",
            ) from None
        except PermissionError:
            raise PermissionDeniedError(f"cannot open {device}: permission denied", "run as root (sudo)") from None
        self.api_version = ioctl(self.fd, abi.KVM_GET_API_VERSION, 0, "KVM_GET_API_VERSION")
        if self.api_version != abi.KVM_API_VERSION:
            self.close()
            raise UnsupportedError(f"KVM API version {self.api_version} is not {abi.KVM_API_VERSION}",
                                   "use a kernel with the stable KVM API")
        self.vcpu_mmap_size = ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE")
        self._cpuid: list[abi.kvm_cpuid_entry2] | None = None

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION")

    def max_vcpus(self) -> int:
        return self.check_extension(abi.Cap.MAX_VCPUS) or self.check_extension(abi.Cap.NR_VCPUS) or 4

    def supported_cpuid(self) -> list[abi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer until it fits."""
        if self._cpuid is None:
            n = 64
            while True:
                buf = abi.cpuid2_with(n)
                buf.nent = n
                try:
                    ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buf), "KVM_GET_SUPPORTED_CPUID")
                    break
                except KvmIoctlError as err:
                    if err.errno != errno.E2BIG or n >= 4096:
                        raise
                    n *= 2
            self._cpuid = [buf.entries[i] for i in range(buf.nent)]
        return self._cpuid

    def create_vm(self, vm_type: int = 0):
        from kvmctl.kvm.vm import Vm

        fd = ioctl(self.fd, abi.KVM_CREATE_VM, vm_type, "KVM_CREATE_VM")
        return Vm(self, fd)
