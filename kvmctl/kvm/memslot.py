"""`Memslot`: one range of guest memory and where it lives in the host's address space.

The one memslot type of kvmctl: the KVM binding records it, the guest layer
lays the data memory out in it, the agers and the tracer index guest pages by
it, and the report carries it as is.

A VM kvmctl did not create is seen from outside: its guest RAM is a host
virtual range found in the process's mappings or named by its VMM (QEMU's
monitor). Such a range has no KVM slot id, and its guest-physical place is
known only when the VMM says it; ``source`` tells where the range came from,
and the unknown parts are None rather than made up.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmctl.units import PAGE_SHIFT

SOURCE_KVM = "kvm"  # set by kvmctl through KVM_SET_USER_MEMORY_REGION: every field is exact


@dataclass(frozen=True)
class Memslot:
    slot: int | None  # KVM slot id; None for a range seen from outside the VMM
    gpa_start: int | None  # None when the guest-physical place is unknown
    gpa_end: int | None  # exclusive
    hva_start: int
    hva_end: int  # exclusive
    size: int
    backing: str  # the backing kind: anon, file, memfd, thp, hugetlb, hugetlb1g
    path: str | None = None  # the backing file, when one was named
    source: str = SOURCE_KVM  # kvm; qmp (the VMM's monitor named it); smaps (read from the process's mappings)

    @classmethod
    def at(cls, slot: int, gpa: int, size: int, hva: int, backing: str = "anon", path: str | None = None) -> Memslot:
        return cls(slot, gpa, gpa + size, hva, hva + size, size, backing, path)

    @classmethod
    def host_range(cls, hva: int, size: int, backing: str, source: str, path: str | None = None,
                   gpa: int | None = None) -> Memslot:
        """Guest RAM seen from outside: no slot id, a guest-physical start only if the VMM named it."""
        return cls(None, gpa, None if gpa is None else gpa + size, hva, hva + size, size, backing, path, source)

    @property
    def pages(self) -> int:
        return self.size >> PAGE_SHIFT

    @property
    def gfn_start(self) -> int | None:
        return None if self.gpa_start is None else self.gpa_start >> PAGE_SHIFT
