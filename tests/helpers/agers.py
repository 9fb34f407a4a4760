"""Helpers of the ager host tests: a prepared VM and a file whose pages reclaim can evict."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from kvmctl.agers.residency import drop_page_cache, resident_pages
from kvmctl.cgroup import Memcg
from tests.helpers.vm import VmChild

SIZE = 256 << 20
HOT = 0.25


def prepared_vm(own: Memcg) -> VmChild:
    """File-backed, its memory written, synced, then read with a hot set."""
    child = VmChild(own, SIZE)
    try:
        assert child.epoch("seq", write=True) > 0
        child.sync()  # clean pages: reclaim can drop them without writeback
        for _ in range(3):
            assert child.epoch(f"hotcold:{HOT}", write=False) > 0
    except BaseException:
        child.close()
        raise
    return child


@contextmanager
def cold_file(tmp_path: Path, size: int, seed: int) -> Iterator[Path]:
    """``size`` random bytes in a file none of whose pages is cached yet, removed afterwards.

    Cold, so the pages get charged to the cgroup of the child that reads them. KVMCTL_TMPDIR names a
    disk filesystem where /tmp is tmpfs (as in the lab); the test is skipped where pages stay cached.
    """
    directory = Path(os.environ.get("KVMCTL_TMPDIR") or tmp_path)
    path = directory / f"kvmctl-test-{os.getpid()}.mem"
    path.write_bytes(np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8).tobytes())
    try:
        drop_page_cache(path)
        if resident_pages(path).any():
            pytest.skip(f"{directory} keeps file pages cached (tmpfs-like) and there is no swap: nothing for "
                        "reclaim to evict; set KVMCTL_TMPDIR to a directory on a disk filesystem")
        yield path
    finally:
        path.unlink()
