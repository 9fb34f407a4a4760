"""The mailbox page shared with each vCPU, and the port I/O exit protocol.

Mirrors guests/mailbox.inc field by field (tests/unit/test_mailbox.py parses
the .inc file and compares), so host and payload cannot drift apart.
"""

from __future__ import annotations

import ctypes
import enum

MAILBOX_MAGIC = 0x584F424C49414D4B  # "KMAILBOX"
PAYLOAD_MAGIC = 0x44504C54434D564B  # "KVMCTLPD"


Command = enum.IntEnum("Command", ["RUN_EPOCH", "EXIT"], start=0, module=__name__)
PatternCode = enum.IntEnum("PatternCode", ["SEQ", "STRIDE", "RANDOM", "HOTCOLD", "MOVING"], start=0, module=__name__)


class Port(enum.IntEnum):
    SYNC = 0x3F0
    PROGRESS = 0x3F1
    ERROR = 0x3F2
    EXIT = 0x3F3
    PING = 0x3F4


class GuestErrorCode(enum.IntEnum):
    BAD_MAGIC = 1
    BAD_PATTERN = 2
    # nested_svm.S (NSVM_ERR_*)
    NSVM_NO_SVM = 0x10
    NSVM_NO_NPT = 0x11
    NSVM_VMEXIT = 0x12
    NSVM_TOO_SMALL = 0x13
    FAULT_BASE = 0x100


SYNC_READY = 0xFFFFFFFF  # the first PORT_SYNC, before any epoch

EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow", 5: "#BR bound",
    6: "#UD invalid opcode", 7: "#NM device not available", 8: "#DF double fault", 10: "#TS invalid TSS",
    11: "#NP segment not present", 12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check", 19: "#XM SIMD error",
}  # fmt: skip


class Mailbox(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("command", ctypes.c_uint64),
        ("epoch", ctypes.c_uint64),
        ("pattern", ctypes.c_uint64),
        ("write", ctypes.c_uint64),
        ("base", ctypes.c_uint64),
        ("pages", ctypes.c_uint64),
        ("stride", ctypes.c_uint64),
        ("hot_pages", ctypes.c_uint64),
        ("cold_every", ctypes.c_uint64),
        ("key", ctypes.c_uint64),
        ("draws", ctypes.c_uint64),
        ("progress_every", ctypes.c_uint64),
        ("tsc_start", ctypes.c_uint64),
        ("tsc_end", ctypes.c_uint64),
        ("touched", ctypes.c_uint64),
        ("checksum", ctypes.c_uint64),
        ("fault_vector", ctypes.c_uint64),
        ("fault_error", ctypes.c_uint64),
        ("fault_rip", ctypes.c_uint64),
        ("fault_cr2", ctypes.c_uint64),
        ("arg0", ctypes.c_uint64),
        ("arg1", ctypes.c_uint64),
        ("shift_every", ctypes.c_uint64),
    ]
