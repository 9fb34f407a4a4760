"""Thin libc access: ioctl, mmap family, memfd, with errors mapped to ours."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Self

from kvmctl.errors import KvmIoctlError, KvmctlError

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_ioctl = libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int

_mmap = libc.mmap
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
_munmap = libc.munmap
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_munmap.restype = ctypes.c_int
_madvise = libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int

PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MAP_HUGETLB, MAP_HUGE_SHIFT = 0x40000, 26
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15


def ioctl(fd: int, request: int, arg: int | None = 0, name: str = "ioctl") -> int:
    """ioctl(2) returning its result; ``arg`` is an int or an address."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise KvmIoctlError(name, ctypes.get_errno())
    return ret


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0, what: str = "memory") -> int:
    addr = _mmap(None, length, prot, flags, fd, offset)
    if addr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise KvmctlError(f"cannot map {length} bytes of {what}: {os.strerror(err)}",
                          "reduce --mem or free memory")
    return addr


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise OSError(ctypes.get_errno(), "munmap")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        raise OSError(ctypes.get_errno(), "madvise")


class FdOwner:
    """Owns one fd, ``self.fd`` (-1 once closed): :meth:`close` releases it, and so does leaving a ``with``.

    Subclasses that hold more (mappings, child fds) release those first and then call ``super().close()``.
    """

    fd: int = -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
