"""`Vcpu`: registers, CPUID and `run()` returning a typed exit."""

from __future__ import annotations

import ctypes
import errno
import mmap
import struct

from kvmctl import libc
from kvmctl.errors import KvmIoctlError
from kvmctl.kvm import abi, exits
from kvmctl.kvm.fd import FdOwner, ioctl
from kvmctl.kvm.stats import Stats

_R = abi.ExitReason
_IO_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class Vcpu(FdOwner):
    """A vCPU fd and its shared kvm_run page; created by :meth:`kvmctl.kvm.Vm.create_vcpu`."""

    def __init__(self, vm, fd: int, index: int):
        self.vm = vm
        self.fd = fd
        self.index = index
        self._map = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_struct = abi.kvm_run.from_buffer(self._map)
        self._stats: Stats | None = None

    # --- registers ---------------------------------------------------------
    def _get(self, struct, request: int, name: str):
        out = struct()
        ioctl(self.fd, request, ctypes.addressof(out), name)
        return out

    def get_regs(self) -> abi.kvm_regs:
        return self._get(abi.kvm_regs, abi.KVM_GET_REGS, "KVM_GET_REGS")

    def set_regs(self, regs: abi.kvm_regs) -> None:
        ioctl(self.fd, abi.KVM_SET_REGS, ctypes.addressof(regs), "KVM_SET_REGS")

    def get_sregs(self) -> abi.kvm_sregs:
        return self._get(abi.kvm_sregs, abi.KVM_GET_SREGS, "KVM_GET_SREGS")

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        ioctl(self.fd, abi.KVM_SET_SREGS, ctypes.addressof(sregs), "KVM_SET_SREGS")

    def set_cpuid(self, entries) -> None:
        buf = abi.cpuid2_with(len(entries))
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        ioctl(self.fd, abi.KVM_SET_CPUID2, ctypes.addressof(buf), "KVM_SET_CPUID2")

    def tsc_khz(self) -> int:
        return ioctl(self.fd, abi.KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ")

    def register_snapshot(self) -> dict[str, int]:
        """Registers for error reports; never raises."""
        try:
            out = self.get_regs().as_dict()
            s = self.get_sregs()
            out.update(cr0=s.cr0, cr2=s.cr2, cr3=s.cr3, cr4=s.cr4, efer=s.efer, cs=s.cs.selector, cpl=s.cs.dpl)
            return out
        except Exception:  # noqa: BLE001 - best effort while already failing
            return {}

    # --- running -----------------------------------------------------------
    def run(self) -> exits.Exit:
        """Enter the guest until the next exit to user space."""
        try:
            libc.ioctl(self.fd, abi.KVM_RUN, 0)
        except OSError as err:
            if err.errno in (errno.EINTR, errno.EAGAIN):
                self.run_struct.immediate_exit = 0
                return exits.Interrupted()
            raise KvmIoctlError("KVM_RUN", err.errno) from None
        return self.decode_exit()

    def decode_exit(self) -> exits.Exit:
        run = self.run_struct
        reason = run.exit_reason
        if reason == _R.IO:
            io = run.exit.io
            if io.direction == abi.KVM_EXIT_IO_OUT:
                (data,) = struct.unpack_from(_IO_FORMATS[io.size], self._map, io.data_offset)
                return exits.IoOut(io.port, io.size, data, io.count)
            return exits.IoIn(io.port, io.size, io.count)
        if reason == _R.HLT:
            return exits.Hlt()
        if reason == _R.MMIO:
            m = run.exit.mmio
            return exits.Mmio(m.phys_addr, bool(m.is_write), bytes(m.data[: m.len]), m.len)
        if reason == _R.SHUTDOWN:
            return exits.Shutdown()
        if reason == _R.FAIL_ENTRY:
            f = run.exit.fail_entry
            return exits.FailEntry(f.hardware_entry_failure_reason, f.cpu)
        if reason == _R.INTERNAL_ERROR:
            i = run.exit.internal
            return exits.InternalError(i.suberror, tuple(i.data[: min(i.ndata, 16)]))
        if reason == _R.SYSTEM_EVENT:
            e = run.exit.system_event
            return exits.SystemEvent(e.type, tuple(e.data[: min(e.ndata, 16)]))
        if reason == _R.EXCEPTION:
            return exits.GuestException(run.exit.ex.exception, run.exit.ex.error_code)
        if reason == _R.INTR:
            return exits.Interrupted()
        return exits.Unknown(reason, run.exit.hw.hardware_exit_reason)

    def set_io_in_data(self, value: int) -> None:
        """Answer an IoIn exit: the value the guest's `in` will read."""
        io = self.run_struct.exit.io
        struct.pack_into(_IO_FORMATS[io.size], self._map, io.data_offset, value)

    def request_exit(self) -> None:
        """Make the next (or current, with a signal) KVM_RUN return EINTR."""
        self.run_struct.immediate_exit = 1

    def stats(self) -> Stats:
        if self._stats is None:
            self._stats = Stats(ioctl(self.fd, abi.KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD"))
        return self._stats

    def close(self) -> None:
        if self._stats:
            self._stats.close()
            self._stats = None
        if self.fd >= 0:
            del self.run_struct
            self._map.close()
        super().close()
