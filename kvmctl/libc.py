"""The one ctypes binding to the C library: the calls Python's ``os`` and ``mmap`` lack.

Every function raises :class:`OSError` with the errno when the call fails, so
callers say what failed in their own words; nothing here knows about KVM,
BPF or the command line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _fn(name: str, restype, *argtypes):
    fn = getattr(_libc, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_ioctl = _fn("ioctl", ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_mmap = _fn("mmap", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long)
_munmap = _fn("munmap", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_madvise = _fn("madvise", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mincore = _fn("mincore", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_prctl = _fn("prctl", ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_mount = _fn("mount", ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
             ctypes.c_void_p)
_syscall = _libc.syscall  # variadic: callers pass full-width integers or pointers

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MAP_HUGETLB, MAP_HUGE_SHIFT = 0x40000, 26
MADV_HUGEPAGE = 14
MADV_PAGEOUT = 21  # Linux 5.4+
PR_SET_PDEATHSIG = 1
_MAP_FAILED = ctypes.c_void_p(-1).value


def _error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def ioctl(fd: int, request: int, arg: int | None = 0) -> int:
    """ioctl(2) returning its result; ``arg`` is an int or an address."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise _error("ioctl")
    return ret


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) at an address of the kernel's choice; the address."""
    addr = _mmap(None, length, prot, flags, fd, offset)
    if addr in (None, _MAP_FAILED):
        raise _error("mmap")
    return addr


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise _error("munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        raise _error("madvise")


def mincore(addr: int, length: int, vec_address: int) -> None:
    """One byte per page of [addr, addr + length) at ``vec_address``: bit 0 = resident."""
    if _mincore(addr, length, vec_address) != 0:
        raise _error("mincore")


def prctl(option: int, arg2: int = 0) -> None:
    if _prctl(option, arg2, 0, 0, 0) != 0:
        raise _error("prctl")


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    if _mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        raise _error("mount")


def syscall(number: int, *args) -> int:
    """syscall(2) for calls libc does not wrap (bpf, perf_event_open); ints are passed as longs."""
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = _syscall(ctypes.c_long(number), *wide)
    if ret < 0:
        raise _error(f"syscall {number}")
    return ret
