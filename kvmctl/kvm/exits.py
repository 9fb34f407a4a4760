"""Typed vCPU exits, so callers match on classes instead of poking offsets."""

from __future__ import annotations

from dataclasses import dataclass


class Exit:
    """Base of every exit :meth:`kvmctl.kvm.Vcpu.run` returns."""


@dataclass(frozen=True, slots=True)
class IoOut(Exit):
    port: int
    size: int
    data: int  # the first item, little-endian (what `out` wrote)
    count: int


@dataclass(frozen=True, slots=True)
class IoIn(Exit):
    port: int
    size: int
    count: int


@dataclass(frozen=True, slots=True)
class Mmio(Exit):
    phys_addr: int
    is_write: bool
    data: bytes
    length: int


@dataclass(frozen=True, slots=True)
class Hlt(Exit):
    pass


@dataclass(frozen=True, slots=True)
class Shutdown(Exit):
    """Triple fault (or an explicit shutdown)."""


@dataclass(frozen=True, slots=True)
class FailEntry(Exit):
    reason: int  # hardware_entry_failure_reason
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalError(Exit):
    suberror: int
    data: tuple[int, ...]

    SUBERRORS = {1: "emulation failure", 2: "simultaneous exceptions", 3: "delivery event", 4: "unexpected exit reason"}

    @property
    def description(self) -> str:
        return self.SUBERRORS.get(self.suberror, f"suberror {self.suberror}")


@dataclass(frozen=True, slots=True)
class SystemEvent(Exit):
    type: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GuestException(Exit):
    exception: int
    error_code: int


@dataclass(frozen=True, slots=True)
class Interrupted(Exit):
    """KVM_RUN returned EINTR (a signal, or immediate_exit was set)."""


@dataclass(frozen=True, slots=True)
class Unknown(Exit):
    code: int
    hardware_exit_reason: int
