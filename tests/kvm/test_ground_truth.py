"""The ground truth (kvmctl/guest/patterns.py) against what the guest really did.

Every write stamps epoch+1 into the first qword of the page, so after several
epochs a page holds the number of the last epoch that wrote it. The host
predicts that from the parameters alone; these tests read the stamps back
from guest memory and compare page by page.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.mailbox import Port
from kvmctl.guest.patterns import Pattern, random_key
from kvmctl.kvm import BackingKind
from kvmctl.kvm.memory import HUGE_2M

pytestmark = pytest.mark.kvm

MIB = 1 << 20
PATTERNS = ["seq", "stride:3", "stride:700", "random", "random:0.3", "hotcold:0.25", "hotcold:0.25:3",
            "moving:0.25:2", "moving:0.3:1"]
EPOCHS = 5
SEED = 7


def expected_stamps(m: GuestMachine, pattern: Pattern, epochs: range, seed: int,
                    before: np.ndarray) -> np.ndarray:
    """Per page: epoch+1 of the last epoch whose touched set holds it, else what it held before."""
    stamps = before.copy()
    for e in epochs:
        stamps[m.ground_truth(pattern, e, seed)] = e + 1
    return stamps


def check_touch_counts(m: GuestMachine, pattern: Pattern, result, seed: int) -> None:
    for v, region in zip(result.vcpus, m.regions):
        want = pattern.touch_count(region.pages, result.epoch, random_key(seed, v.vcpu, result.epoch))
        assert v.touched == want, f"vCPU {v.vcpu} epoch {result.epoch}: guest {v.touched}, ground truth {want}"
        assert v.tsc_end > v.tsc_start


def run_write_epochs(m: GuestMachine, pattern: Pattern, seed: int = SEED) -> None:
    before = m.stamps().copy()
    epochs = range(m.next_epoch, m.next_epoch + EPOCHS)
    for _ in epochs:
        check_touch_counts(m, pattern, m.run_epoch(pattern, write=True, seed=seed), seed)
    stamps = m.stamps()
    want = expected_stamps(m, pattern, epochs, seed, before)
    bad = np.flatnonzero(stamps != want)
    assert bad.size == 0, (f"{bad.size} pages differ, first {bad[:8].tolist()}: "
                           f"guest {stamps[bad[:8]].tolist()} truth {want[bad[:8]].tolist()}")


@pytest.mark.parametrize("shared", [False, True], ids=["partitioned", "shared"])
@pytest.mark.parametrize("vcpus", [1, 2])
@pytest.mark.parametrize("text", PATTERNS)
def test_write_stamps_match_ground_truth(text, vcpus, shared):
    pattern = Pattern.parse(text)
    with GuestMachine(MachineSpec(4 * MIB, vcpus, shared=shared), epoch_timeout=60) as m:
        run_write_epochs(m, pattern)
        m.finish()


def test_ground_truth_is_not_trivial():
    """The patterns above really differ: the stamps they leave are not all alike."""
    with GuestMachine(MachineSpec(4 * MIB, 1), epoch_timeout=60) as m:
        masks = {t: m.ground_truth(Pattern.parse(t), 3, SEED) for t in PATTERNS}
    sums = {t: int(mask.sum()) for t, mask in masks.items()}
    assert sums["seq"] == 1024 and sums["stride:3"] == 342 and sums["stride:700"] == 2
    assert sums["hotcold:0.25"] == 256 and sums["hotcold:0.25:3"] == 1024  # epoch 3 touches cold pages
    assert 250 < sums["random:0.3"] < 307  # 307 draws with repeats
    assert not np.array_equal(masks["random"], masks["seq"])
    # moving: a quarter in window 3 // 2 = 1; 307 pages in window 3, wrapping past the end (921..1023, 0..203)
    assert np.flatnonzero(masks["moving:0.25:2"]).tolist() == list(range(256, 512))
    assert np.flatnonzero(masks["moving:0.3:1"]).tolist() == list(range(0, 204)) + list(range(921, 1024))


@pytest.mark.parametrize("shared", [False, True], ids=["partitioned", "shared"])
@pytest.mark.parametrize("text", ["seq", "random:0.3", "hotcold:0.25:3", "moving:0.3:1"])
def test_read_leaves_stamps_and_checksums(text, shared):
    pattern = Pattern.parse(text)
    with GuestMachine(MachineSpec(4 * MIB, 2, shared=shared), epoch_timeout=60) as m:
        run_write_epochs(m, pattern)
        before = m.stamps().copy()
        for e in range(EPOCHS, EPOCHS + 3):
            sums0 = [mb.checksum for mb in m.mailboxes]
            r = m.run_epoch(pattern, write=False, seed=SEED)
            check_touch_counts(m, pattern, r, SEED)
            assert np.array_equal(m.stamps(), before), "a read epoch changed guest memory"
            for i, (region, mb) in enumerate(zip(m.regions, m.mailboxes)):
                seq = pattern.touch_sequence(region.pages, e, random_key(SEED, i, e))
                want = int(before[region.first_page + seq].sum(dtype=np.uint64))
                assert mb.checksum - sums0[i] == want, f"vCPU {i} epoch {e} checksum"


def test_partition_with_uneven_split_and_several_memslots():
    """3 vCPUs over 1536 pages in 3 memslots: regions cross memslot boundaries."""
    with GuestMachine(MachineSpec(6 * MIB, 3, memslots=3), epoch_timeout=60) as m:
        assert len(m.data_memslots) == 3
        assert [r.pages for r in m.regions] == [512, 512, 512]
        run_write_epochs(m, Pattern.parse("random:0.5"))
    with GuestMachine(MachineSpec(6 * MIB, 5, memslots=3), epoch_timeout=60) as m:
        assert sorted({r.pages for r in m.regions}) == [307, 308]  # 1536 / 5 is not whole
        run_write_epochs(m, Pattern.parse("stride:5"))
        run_write_epochs(m, Pattern.parse("hotcold:0.3:2"))
        run_write_epochs(m, Pattern.parse("moving:0.3:1"))


@pytest.mark.parametrize("backing", [BackingKind.ANON, BackingKind.THP])
def test_2m_guest_pages(backing):
    with GuestMachine(MachineSpec(8 * MIB, 2, backing=backing, guest_page=HUGE_2M, memslots=2),
                      epoch_timeout=60) as m:
        run_write_epochs(m, Pattern.parse("random:0.4"))
        run_write_epochs(m, Pattern.parse("stride:2"))


def test_progress_exits():
    """PORT_PROGRESS reports every N touches, with the running count, per vCPU."""
    seen: dict[int, list[int]] = {0: [], 1: []}
    with GuestMachine(MachineSpec(4 * MIB, 2), epoch_timeout=60) as m:
        m.progress_cb = lambda vcpu, touches: seen[vcpu].append(touches)
        r = m.run_epoch(Pattern.parse("random:0.7"), write=True, seed=SEED, progress_every=64)
    for v in r.vcpus:
        want = list(range(64, v.touched + 1, 64))
        assert seen[v.vcpu] == want and v.progress_exits == len(want)


def test_guest_is_parked_between_epochs():
    """After run_epoch returns, no vCPU runs: memory stays still and registers are readable."""
    with GuestMachine(MachineSpec(4 * MIB, 2), epoch_timeout=60) as m:
        r = m.run_epoch(Pattern.parse("seq"), write=True, epoch=41)
        before = m.stamps().copy()
        time.sleep(0.05)
        assert np.array_equal(m.stamps(), before)
        for vcpu in m.vm.vcpus:  # KVM_GET_REGS would wait for a vCPU inside KVM_RUN
            regs = vcpu.get_regs()
            assert regs.rax == r.epoch and regs.rdx & 0xFFFF == int(Port.SYNC)  # just did `out PORT_SYNC`
        m.run_epoch(Pattern.parse("seq"), write=True)
        assert np.all(m.stamps() == 43)


def test_guest_timing_agrees_with_the_host_clock():
    """rdtsc deltas converted with KVM_GET_TSC_KHZ fit inside the host's wall time of each epoch."""
    with GuestMachine(MachineSpec(32 * MIB, 1), epoch_timeout=60) as m:
        for _ in range(4):
            r = m.run_epoch(Pattern.parse("random:8"), write=True)
            assert 0 < r.guest_seconds <= r.wall_seconds * 1.02 + 20e-6, (r.guest_seconds, r.wall_seconds)
        assert m.tsc_hz > 100e6


def test_as_many_vcpus_as_kvmctl_supports():
    from kvmctl.guest import longmode as lm
    from kvmctl.kvm import Kvm

    with Kvm() as kvm:
        n = min(lm.MAX_VCPUS, kvm.max_vcpus())
        with GuestMachine(MachineSpec(128 * MIB, n), kvm=kvm, epoch_timeout=60) as m:
            run_write_epochs(m, Pattern.parse("random:0.5"))
            assert len(m.vcpu_thread_ids) == n
