"""A general KVM binding (ctypes): Kvm -> Vm -> Vcpu, exits, stats, backings.

Knows nothing about aging or BPF; it mirrors the kernel's three fds the way
rust-vmm's kvm-ioctls does.
"""

from kvmctl.kvm.abi import Cap, ExitReason
from kvmctl.kvm.memory import Backing, BackingKind, create_backing
from kvmctl.kvm.system import Kvm
from kvmctl.kvm.vcpu import Vcpu
from kvmctl.kvm.memslot import Memslot
from kvmctl.kvm.vm import Vm

__all__ = ["Backing", "BackingKind", "Cap", "ExitReason", "Kvm", "Memslot", "Vcpu", "Vm", "create_backing"]
