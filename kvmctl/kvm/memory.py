"""Guest memory backings: where a memslot's host virtual memory comes from.

Each backing owns one host mapping (``hva`` .. ``hva + size``) and releases
it on :meth:`Backing.close`. Kinds:

- ``anon``: private anonymous memory (never reclaimed here: no swap).
- ``file``: a MAP_SHARED mapping of a regular file, so guest memory lives in
  the page cache and memcg reclaim can evict it. A temporary file is unlinked
  as soon as it is open, so nothing is left behind even on SIGKILL.
- ``memfd``: a MAP_SHARED memfd (shmem).
- ``thp``: anonymous memory, 2 MiB aligned, with MADV_HUGEPAGE.
- ``hugetlb``/``hugetlb1g``: MAP_HUGETLB of 2 MiB / 1 GiB pages, which must
  be reserved first (vm.nr_hugepages).

Failures are plain: they say what could not be mapped and why; the commands
that size the memory add which flag to change.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvmctl import libc
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.kvm.fd import FdOwner
from kvmctl.units import HUGE_1G, HUGE_2M, PAGE_SIZE


class GuestMemoryError(KvmctlError):
    """Guest memory could not be mapped (too much asked, or the pool is empty)."""


class BackingKind(str, enum.Enum):
    ANON = "anon"
    FILE = "file"
    MEMFD = "memfd"
    THP = "thp"
    HUGETLB = "hugetlb"
    HUGETLB_1G = "hugetlb1g"

    @classmethod
    def parse(cls, text: str) -> "BackingKind":
        try:
            return cls(text)
        except ValueError:
            names = "|".join(k.value for k in cls)
            raise UsageError(f"unknown backing {text!r}", f"use one of {names}") from None

    @property
    def alignment(self) -> int:
        """Size and guest-physical alignment a memslot of this kind needs."""
        return {BackingKind.THP: HUGE_2M, BackingKind.HUGETLB: HUGE_2M, BackingKind.HUGETLB_1G: HUGE_1G}.get(
            self, PAGE_SIZE
        )


def _map(length: int, prot: int, flags: int, fd: int, what: str) -> int:
    try:
        return libc.mmap(length, prot, flags, fd, 0)
    except OSError as err:
        raise GuestMemoryError(f"cannot map {length} bytes of {what}: {err.strerror}",
                               "free memory or map less") from None


@dataclass
class Backing(FdOwner):
    kind: BackingKind
    size: int
    hva: int
    path: str | None = None  # the backing file, for page-cache residency (None when unlinked/anonymous)
    fd: int = -1  # kept open for file/memfd so residency can be read after the path is gone
    _map_base: int = 0
    _map_len: int = 0

    def view(self, dtype=np.uint8) -> np.ndarray:
        """A numpy view of the whole mapping (valid until close)."""
        buf = (ctypes.c_char * self.size).from_address(self.hva)
        return np.frombuffer(buf, dtype=dtype)

    def close(self) -> None:
        if self._map_len:
            libc.munmap(self._map_base, self._map_len)
            self._map_len = 0
        super().close()


def create_backing(kind: BackingKind | str, size: int, path: str | os.PathLike | None = None,
                   temp_dir: str | None = None) -> Backing:
    """Map ``size`` bytes of the given kind. ``path`` only for ``file``."""
    kind = BackingKind.parse(kind) if isinstance(kind, str) else kind
    if size <= 0 or size % kind.alignment:
        raise UsageError(f"{kind.value} memory size {size} is not a positive multiple of {kind.alignment} bytes",
                         f"use a size that is a multiple of {kind.alignment // 1024} KiB")
    if path is not None and kind is not BackingKind.FILE:
        raise UsageError(f"a backing path only applies to file backings, not {kind.value}",
                         "give no path, or a file backing")
    rw = libc.PROT_READ | libc.PROT_WRITE
    if kind is BackingKind.FILE:
        return _file_backing(size, path, temp_dir)
    if kind is BackingKind.MEMFD:
        fd = os.memfd_create("kvmctl-guest", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            hva = _map(size, rw, libc.MAP_SHARED, fd, "memfd")
        except BaseException:
            os.close(fd)
            raise
        return Backing(kind, size, hva, None, fd, hva, size)
    if kind in (BackingKind.HUGETLB, BackingKind.HUGETLB_1G):
        shift = kind.alignment.bit_length() - 1
        flags = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_HUGETLB | (shift << libc.MAP_HUGE_SHIFT)
        hva = _map(size, rw, flags, -1, "hugetlb memory")
        return Backing(kind, size, hva, None, -1, hva, size)
    flags = libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
    if kind is BackingKind.THP:
        # Over-allocate and align so every 2 MiB of the guest can be a huge page.
        base = _map(size + HUGE_2M, rw, flags, -1, "anonymous memory")
        hva = (base + HUGE_2M - 1) & ~(HUGE_2M - 1)
        libc.madvise(hva, size, libc.MADV_HUGEPAGE)
        return Backing(kind, size, hva, None, -1, base, size + HUGE_2M)
    hva = _map(size, rw, flags, -1, "anonymous memory")
    return Backing(kind, size, hva, None, -1, hva, size)


def _file_backing(size: int, path, temp_dir: str | None) -> Backing:
    temporary = path is None
    if temporary:
        # Not /dev/shm or tmpfs: shmem pages are not reclaimable without swap.
        directory = temp_dir or os.environ.get("KVMCTL_TMPDIR") or "/var/tmp"
        try:
            fd, name = tempfile.mkstemp(prefix="kvmctl-guest-", dir=directory)
        except OSError as err:
            raise KvmctlError(f"cannot create a guest memory file in {directory}: {err.strerror}",
                              "set KVMCTL_TMPDIR to a writable directory on a disk filesystem") from None
        os.unlink(name)  # nothing to clean up later, whatever happens
        shown = None
    else:
        p = Path(path)
        if p.exists() and not p.is_file():
            raise UsageError(f"backing path {p} is not a regular file", "name a regular file or a new path")
        created = not p.exists()
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise UsageError(f"cannot open backing file {p}: {err.strerror}",
                             "choose a writable path on a disk filesystem") from None
        shown = str(p)
    try:
        if os.fstat(fd).st_size < size:
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, size)  # a filesystem without fallocate
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                    raise UsageError(f"backing file needs {size >> 20} MiB: {err.strerror}",
                                     "free space or use a backing path on another filesystem") from None
                # e.g. a /proc or /sys file: open() worked, but it cannot hold guest memory
                raise UsageError(f"backing file {shown or 'in ' + directory} cannot grow to {size >> 20} MiB: "
                                 f"{err.strerror}", "use a regular file on a writable disk filesystem") from None
        hva = _map(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, "the backing file")
    except BaseException:
        os.close(fd)
        if not temporary and created:  # a file we made for nothing (full disk, say) is not left behind
            Path(path).unlink(missing_ok=True)
        raise
    return Backing(BackingKind.FILE, size, hva, shown, fd, hva, size)
