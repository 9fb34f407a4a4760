"""The ager host tests' VM: file-backed, its memory written, synced, then read with a hot set."""

from __future__ import annotations

from hostvm import VmChild

from kvmctl.cgroup import Memcg

SIZE = 256 << 20
HOT = 0.25


def prepared_vm(own: Memcg) -> VmChild:
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
