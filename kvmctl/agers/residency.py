"""Page-cache residency of a backing file, the ground truth for scoring reclaim.

``mincore()`` on a fresh shared mapping of the file reports, page by page,
whether the file's page is in the page cache, whoever mapped it. Mapping the
file does not fault anything in, so looking does not change the answer.
"""

from __future__ import annotations

import mmap
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from kvmctl import libc
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.units import PAGE_SIZE


@contextmanager
def _open(fd_or_path: int | str | os.PathLike) -> Iterator[int]:
    if isinstance(fd_or_path, int):
        yield fd_or_path
        return
    try:
        fd = os.open(fd_or_path, os.O_RDONLY)
    except OSError as err:
        raise UsageError(f"cannot open backing file {fd_or_path}: {err.strerror}", "check the path") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or offset % PAGE_SIZE:
        raise UsageError(f"offset {offset} is not a multiple of the page size {PAGE_SIZE}", "align the offset")
    if length < 0:
        raise UsageError(f"length {length} is negative", "give a length of at least 0")


def resident_pages(fd_or_path: int | str | os.PathLike, offset: int = 0, length: int | None = None) -> np.ndarray:
    """One bool per page of [offset, offset+length) of the file: True = in the page cache.

    ``length`` None means up to the end of the file.
    """
    with _open(fd_or_path) as fd:
        if length is None:
            length = max(0, os.fstat(fd).st_size - offset)
        _check_range(offset, length)
        npages = (length + PAGE_SIZE - 1) // PAGE_SIZE
        if npages == 0:
            return np.zeros(0, dtype=bool)
        size = npages * PAGE_SIZE
        try:
            addr = libc.mmap(size, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        except OSError as err:
            raise KvmctlError(f"mmap of the backing file for mincore failed: {err.strerror}",
                              "the backing must be a regular file or memfd") from None
        try:
            vec = np.zeros(npages, dtype=np.uint8)
            libc.mincore(addr, size, vec.ctypes.data)
        except OSError as err:
            raise KvmctlError(f"mincore failed: {err.strerror}", "the backing must be a regular file or memfd") from None
        finally:
            libc.munmap(addr, size)
    return (vec & 1).astype(bool)


def drop_page_cache(fd_or_path: int | str | os.PathLike, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to drop the clean cached pages of a file range (0 = to the end).

    Used to start an experiment from a cold cache so that the pages are charged
    to the cgroup of whoever faults them in next, not to whoever wrote the file.
    """
    with _open(fd_or_path) as fd:
        os.fdatasync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def resident_fraction(path: Path | str, offset: int = 0, length: int | None = None) -> float:
    pages = resident_pages(path, offset, length)
    return float(pages.mean()) if pages.size else 0.0
