"""`Vm`: a VM fd with its memslots and vCPUs."""

from __future__ import annotations

import ctypes

from kvmctl.errors import UsageError
from kvmctl.kvm import abi
from kvmctl.kvm.memory import Backing
from kvmctl.kvm.memslot import Memslot
from kvmctl.kvm.stats import Stats
from kvmctl.kvm.fd import FdOwner, ioctl
from kvmctl.units import PAGE_SIZE

KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1  # include/linux/kvm_host.h: KVM_SET_USER_MEMORY_REGION's limit


def check_memslot(new: Memslot, backing: Backing, existing: list[Memslot], max_slots: int) -> None:
    """Reject what KVM would reject, before the ioctl, with a useful message."""
    align = backing.kind.alignment
    if new.size <= 0 or new.size % PAGE_SIZE:
        raise UsageError(f"memslot {new.slot}: size {new.size} is not a positive multiple of 4 KiB",
                         "round the size to 4 KiB")
    if new.gpa_start % align or new.size % align:
        raise UsageError(f"memslot {new.slot}: gpa {new.gpa_start:#x} size {new.size:#x} not aligned to {align:#x} "
                         f"({backing.kind.value} backing)", f"align both to {align >> 10} KiB")
    if new.hva_start % PAGE_SIZE:
        raise UsageError(f"memslot {new.slot}: host address {new.hva_start:#x} is not page aligned", "map page aligned memory")
    if backing.size < new.size:
        raise UsageError(f"memslot {new.slot}: backing has {backing.size} bytes, slot needs {new.size}",
                         "make the backing at least as large as the slot")
    if not 0 <= new.slot < max_slots:
        raise UsageError(f"memslot id {new.slot} is outside 0..{max_slots - 1} (KVM_CAP_NR_MEMSLOTS)",
                         "use fewer memslots")
    if new.size // PAGE_SIZE > KVM_MEM_MAX_NR_PAGES:
        raise UsageError(f"memslot {new.slot}: {new.size // PAGE_SIZE} pages exceed KVM's limit of "
                         f"{KVM_MEM_MAX_NR_PAGES} pages per memslot", "split the memory into more memslots")
    if new.gpa_end > 1 << 52:
        raise UsageError(f"memslot {new.slot} ends at {new.gpa_end:#x}, beyond the 52-bit guest-physical space",
                         "use less memory")
    for old in existing:
        if old.slot == new.slot:
            raise UsageError(f"memslot id {new.slot} is already in use", "choose another slot id")
        if new.gpa_start < old.gpa_end and old.gpa_start < new.gpa_end:
            raise UsageError(
                f"memslot {new.slot} [{new.gpa_start:#x}, {new.gpa_end:#x}) overlaps memslot {old.slot} "
                f"[{old.gpa_start:#x}, {old.gpa_end:#x})", "place the memslots at disjoint guest-physical ranges")


class Vm(FdOwner):
    """A KVM VM. Created by :meth:`kvmctl.kvm.Kvm.create_vm`."""

    def __init__(self, kvm, fd: int):
        self.kvm = kvm
        self.fd = fd
        self.memslots: list[Memslot] = []
        self.vcpus: list = []
        self._stats: Stats | None = None
        self.max_memslots = self.check_extension(abi.Cap.NR_MEMSLOTS) or 32

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, int(cap), "KVM_CHECK_EXTENSION")

    def add_memslot(self, slot: int, gpa: int, backing: Backing, size: int | None = None, flags: int = 0) -> Memslot:
        mem = Memslot.at(slot, gpa, backing.size if size is None else size, backing.hva, backing.kind.value,
                         backing.path)
        check_memslot(mem, backing, self.memslots, self.max_memslots)
        region = abi.kvm_userspace_memory_region(slot, flags, gpa, mem.size, backing.hva)
        ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region), "KVM_SET_USER_MEMORY_REGION")
        self.memslots.append(mem)
        return mem

    def remove_memslot(self, slot: int) -> None:
        mem = next((m for m in self.memslots if m.slot == slot), None)
        if mem is None:
            raise UsageError(f"memslot {slot} does not exist", f"remove one of {[m.slot for m in self.memslots]}")
        region = abi.kvm_userspace_memory_region(slot, 0, mem.gpa_start, 0, 0)  # size 0 deletes
        ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region), "KVM_SET_USER_MEMORY_REGION")
        self.memslots.remove(mem)

    def create_vcpu(self, index: int | None = None):
        from kvmctl.kvm.vcpu import Vcpu

        index = len(self.vcpus) if index is None else index
        limit = self.kvm.max_vcpus()
        if index >= limit:
            raise UsageError(f"vCPU {index} exceeds this host's KVM limit of {limit} vCPUs", f"use at most {limit} vCPUs")
        fd = ioctl(self.fd, abi.KVM_CREATE_VCPU, index, "KVM_CREATE_VCPU")
        vcpu = Vcpu(self, fd, index)
        self.vcpus.append(vcpu)
        return vcpu

    def stats(self) -> Stats:
        if self._stats is None:
            self._stats = Stats(ioctl(self.fd, abi.KVM_GET_STATS_FD, 0, "KVM_GET_STATS_FD"))
        return self._stats

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        if self._stats:
            self._stats.close()
            self._stats = None
        super().close()
        self.memslots.clear()  # backings belong to the caller
