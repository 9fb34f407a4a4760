"""Log2 histogram slots as BCC's bpf_log2l() fills them."""

from __future__ import annotations

import pytest

from kvmctl.trace.hist import hist_quantile, hist_total, log2_buckets, slot_bounds
from kvmctl.vocab import Bucket


def bpf_log2(v: int) -> int:
    """BCC's helpers.h bpf_log2(), transcribed (32-bit argument)."""
    r = int(v > 0xFFFF) << 4
    v >>= r
    shift = int(v > 0xFF) << 3
    v >>= shift
    r |= shift
    shift = int(v > 0xF) << 2
    v >>= shift
    r |= shift
    shift = int(v > 0x3) << 1
    v >>= shift
    r |= shift
    return r | (v >> 1)


def bpf_log2l(v: int) -> int:
    """BCC's bpf_log2l(), the slot index ebpf/locks.c and funcs.c use."""
    hi = v >> 32
    return bpf_log2(hi) + 32 + 1 if hi else bpf_log2(v) + 1


@pytest.mark.parametrize("value", [0, 1, 2, 3, 4, 7, 8, 1000, 4095, 4096, (1 << 32) - 1, 1 << 32, 123456789012])
def test_every_value_lands_inside_its_slot_bounds(value):
    low, high = slot_bounds(bpf_log2l(value))
    assert low <= value <= high


def test_slots_tile_the_number_line():
    previous_high = 1
    for slot in range(2, 64):
        low, high = slot_bounds(slot)
        assert low == previous_high + 1
        previous_high = high


def test_buckets_skip_empty_slots_and_keep_order():
    counts = [0] * 64
    counts[1], counts[11], counts[20] = 2, 5, 1
    assert log2_buckets(counts) == [Bucket(0, 1, 2), Bucket(1024, 2047, 5), Bucket(524288, 1048575, 1)]
    assert log2_buckets([0] * 64) == []


def test_quantiles_are_bucket_upper_bounds():
    buckets = [Bucket(512, 1023, 90), Bucket(1024, 2047, 9), Bucket(1 << 20, (1 << 21) - 1, 1)]
    assert hist_total(buckets) == 100
    assert hist_quantile(buckets, 0.5) == 1023
    assert hist_quantile(buckets, 0.95) == 2047
    assert hist_quantile(buckets, 1.0) == (1 << 21) - 1
    assert hist_quantile([], 0.5) is None
    with pytest.raises(ValueError):
        hist_quantile(buckets, 1.5)
    with pytest.raises(ValueError):
        slot_bounds(-1)

