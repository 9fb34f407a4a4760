"""mincore-based residency on a small file (page cache, no root needed)."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from kvmctl.agers.residency import drop_page_cache, resident_fraction, resident_pages
from kvmctl.units import PAGE_SIZE
from kvmctl.errors import UsageError


@pytest.fixture
def datafile(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(os.urandom(16 * PAGE_SIZE))
    return path


def test_written_file_is_resident_and_ranges_are_per_page(datafile):
    pages = resident_pages(datafile)
    assert pages.dtype == bool and pages.size == 16 and pages.all()
    assert resident_pages(datafile, 4 * PAGE_SIZE, 3 * PAGE_SIZE).size == 3
    assert resident_pages(datafile, 0, PAGE_SIZE + 1).size == 2  # partial page counts
    assert resident_pages(datafile, 0, 0).size == 0


def test_dropped_pages_read_back_selectively(datafile):
    drop_page_cache(datafile)
    if resident_pages(datafile).any():
        pytest.skip("this filesystem keeps pages cached despite POSIX_FADV_DONTNEED")
    with open(datafile, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        for page in (1, 5, 6):
            m[page * PAGE_SIZE]
        m.close()
    got = resident_pages(datafile)
    # readahead may bring neighbours in; the touched pages must be there
    assert got[[1, 5, 6]].all()
    assert resident_fraction(datafile) == pytest.approx(got.mean())


def test_accepts_an_open_fd(datafile):
    fd = os.open(datafile, os.O_RDONLY)
    try:
        assert np.array_equal(resident_pages(fd), resident_pages(datafile))
    finally:
        os.close(fd)


def test_bad_ranges(datafile, tmp_path):
    with pytest.raises(UsageError):
        resident_pages(datafile, 100, PAGE_SIZE)
    with pytest.raises(UsageError):
        resident_pages(datafile, 0, -1)
    with pytest.raises(UsageError):
        resident_pages(tmp_path / "missing")
