"""The KVM user-space ABI (x86-64) as ctypes structures and ioctl numbers.

Layouts follow include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
Every structure has size assertions below; tests/kvm/test_abi_c.py compiles
a C program against the system's <linux/kvm.h> and compares every size,
offset and ioctl number defined here.
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import c_int16, c_uint8, c_uint16, c_uint32, c_uint64

from kvmctl.kvm.ioctl import _IO, _IOR, _IOW, _IOWR

KVMIO = 0xAE
KVM_API_VERSION = 12


class Cap(enum.IntEnum):
    """KVM_CAP_* numbers the tool asks about."""

    USER_MEMORY = 3
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    SYNC_REGS = 74
    MAX_VCPU_ID = 128
    IMMEDIATE_EXIT = 136
    NESTED_STATE = 157
    DIRTY_LOG_RING = 192
    BINARY_STATS_FD = 203
    USER_MEMORY2 = 231
    GUEST_MEMFD = 234


class ExitReason(enum.IntEnum):
    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class kvm_userspace_memory_region2(ctypes.Structure):
    # The first five fields are kvm_userspace_memory_region's; the C check still walks the whole list.
    _fields_ = kvm_userspace_memory_region._fields_ + [
        ("guest_memfd_offset", c_uint64),
        ("guest_memfd", c_uint32),
        ("pad1", c_uint32),
        ("pad2", c_uint64 * 14),
    ]


class kvm_create_guest_memfd(ctypes.Structure):
    _fields_ = [("size", c_uint64), ("flags", c_uint64), ("reserved", c_uint64 * 6)]


class kvm_regs(ctypes.Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in self._fields_}


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """Header only; entries follow (see :func:`cpuid2_with`)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


def cpuid2_with(n: int):
    """A kvm_cpuid2 with room for ``n`` entries (the flexible array)."""

    class kvm_cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * n)]

    return kvm_cpuid2_n()


# --- struct kvm_run and the parts of its exit union the tool uses ---------


class kvm_run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),
    ]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_system_event(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("mmio", kvm_run_mmio),
        ("internal", kvm_run_internal),
        ("system_event", kvm_run_system_event),
        ("padding", ctypes.c_char * 256),
    ]


class kvm_run(ctypes.Structure):
    """The fixed head of the shared kvm_run page (sync regs are not used)."""

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
    ]


# --- binary statistics (KVM_GET_STATS_FD) ---------------------------------


class kvm_stats_header(ctypes.Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("name_size", c_uint32),
        ("num_desc", c_uint32),
        ("id_offset", c_uint32),
        ("desc_offset", c_uint32),
        ("data_offset", c_uint32),
    ]


class kvm_stats_desc(ctypes.Structure):
    """Fixed part; ``name_size`` bytes of name follow each descriptor."""

    _fields_ = [
        ("flags", c_uint32),
        ("exponent", c_int16),
        ("size", c_uint16),
        ("offset", c_uint32),
        ("bucket_size", c_uint32),
    ]


# flags of kvm_stats_desc
KVM_STATS_TYPE_SHIFT, KVM_STATS_TYPE_MASK = 0, 0xF
KVM_STATS_UNIT_SHIFT, KVM_STATS_UNIT_MASK = 4, 0xF << 4
KVM_STATS_BASE_SHIFT, KVM_STATS_BASE_MASK = 8, 0xF << 8


class StatType(enum.IntEnum):
    CUMULATIVE = 0
    INSTANT = 1
    PEAK = 2
    LINEAR_HIST = 3
    LOG_HIST = 4


class StatUnit(enum.IntEnum):
    NONE = 0
    BYTES = 1
    SECONDS = 2
    CYCLES = 3
    BOOLEAN = 4


class StatBase(enum.IntEnum):
    POW10 = 0
    POW2 = 1


# --- ioctl numbers ---------------------------------------------------------

# system ioctls (on /dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
# vm ioctls
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, kvm_create_guest_memfd)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)
# vcpu ioctls
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)

# Sizes the kernel ABI fixes (x86-64); checked at import so a typo fails fast.
_EXPECTED_SIZES = {
    kvm_userspace_memory_region: 32,
    kvm_userspace_memory_region2: 160,
    kvm_create_guest_memfd: 64,
    kvm_regs: 144,
    kvm_segment: 24,
    kvm_dtable: 16,
    kvm_sregs: 312,
    kvm_cpuid_entry2: 40,
    kvm_cpuid2: 8,
    kvm_run_exit: 256,
    kvm_stats_header: 24,
    kvm_stats_desc: 16,
}
for _struct, _size in _EXPECTED_SIZES.items():
    assert ctypes.sizeof(_struct) == _size, (_struct.__name__, ctypes.sizeof(_struct), _size)
assert kvm_run.exit.offset == 32
assert kvm_run.kvm_valid_regs.offset == 32 + 256
