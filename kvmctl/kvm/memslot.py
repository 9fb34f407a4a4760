"""`Memslot`: one range of guest-physical memory and where it lives in the host's address space.

The one memslot type of kvmctl: the KVM binding records it, the guest layer
lays the data memory out in it, the agers and the tracer index guest pages by
it, and the report carries it as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmctl.units import PAGE_SHIFT


@dataclass(frozen=True)
class Memslot:
    slot: int
    gpa_start: int
    gpa_end: int  # exclusive
    hva_start: int
    hva_end: int  # exclusive
    size: int
    backing: str  # the backing kind: anon, file, memfd, thp, hugetlb, hugetlb1g
    path: str | None = None  # the backing file, when one was named

    @classmethod
    def at(cls, slot: int, gpa: int, size: int, hva: int, backing: str = "anon", path: str | None = None) -> Memslot:
        return cls(slot, gpa, gpa + size, hva, hva + size, size, backing, path)

    @property
    def pages(self) -> int:
        return self.size >> PAGE_SHIFT

    @property
    def gfn_start(self) -> int:
        return self.gpa_start >> PAGE_SHIFT
