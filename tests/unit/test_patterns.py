"""Touch patterns: parsing, the random draw sequence, partitions, touch counts."""

from __future__ import annotations

import numpy as np
import pytest

from kvmctl.errors import UsageError
from kvmctl.guest.mailbox import PatternCode
from kvmctl.guest.patterns import (
    PATTERN_HELP, Pattern, Region, epoch_touched, partition, random_key, splitmix64,
)  # fmt: skip

MASK = (1 << 64) - 1


# --- an independent pure-Python model of what guests/touch.S computes ----------------------------


def ref_mix(z: int) -> int:
    """The splitmix64 output function, written from the published algorithm."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return z ^ (z >> 31)


def ref_random_pages(key: int, pages: int, draws: int) -> list[int]:
    """touch.S: state += GOLDEN; page = hi32(mix(state)) * pages >> 32, per draw."""
    out, state = [], key
    for _ in range(draws):
        state = (state + 0x9E3779B97F4A7C15) % (1 << 64)
        out.append(((ref_mix(state) >> 32) * pages) >> 32)
    return out


def test_splitmix64_known_outputs():
    # the first outputs of SplitMix64 seeded with 0 (Steele, Lea, Flood 2014; Vigna's reference C)
    assert [ref_mix(i * 0x9E3779B97F4A7C15 & MASK) for i in (1, 2, 3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    for z in (0, 1, 0x9E3779B97F4A7C15, MASK, 0x123456789ABCDEF0, 1 << 63):
        assert splitmix64(z) == ref_mix(z)
    assert splitmix64(MASK + 5) == ref_mix(4)  # inputs wrap to 64 bits


@pytest.mark.parametrize("pages", [1, 2, 3, 511, 4096, 262147, (1 << 32) - 1])
@pytest.mark.parametrize("key", [0, 1, 0xDEADBEEF, MASK, random_key(7, 1, 9)])
def test_random_sequence_matches_reference(pages, key):
    p = Pattern.parse("random:0.5") if pages > 1 else Pattern.parse("random")
    draws = min(p.draws(pages), 3000)
    seq = Pattern(PatternCode.RANDOM, draw_fraction=draws / pages).touch_sequence(pages, 0, key)
    assert seq.dtype == np.int64 and len(seq) == draws
    assert seq.tolist() == ref_random_pages(key, pages, draws)
    assert seq.min() >= 0 and seq.max() < pages


def test_random_key_depends_on_seed_vcpu_and_epoch():
    keys = {random_key(s, v, e) for s in range(3) for v in range(3) for e in range(3)}
    assert len(keys) == 27
    g = 0x9E3779B97F4A7C15
    assert random_key(5, 2, 3) == ref_mix((ref_mix((ref_mix(5 + g) + 2) & MASK) + 3) & MASK)


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["seq", "stride:1", "stride:64", "random", "random:0.3", "random:2",
                                  "hotcold:0.25", "hotcold:0.25:3", "hotcold:0", "hotcold:1:1", "moving:0.25:1",
                                  "moving:1:3"])
def test_parse_round_trip(text):
    assert str(Pattern.parse(text)) == text
    assert Pattern.parse(f"  {text} ") == Pattern.parse(text)


def test_parse_fields():
    assert Pattern.parse("stride:8") == Pattern(PatternCode.STRIDE, stride=8)
    assert Pattern.parse("random:0.3") == Pattern(PatternCode.RANDOM, draw_fraction=0.3)
    assert Pattern.parse("hotcold:0.25:3") == Pattern(PatternCode.HOTCOLD, hot_fraction=0.25, cold_every=3)
    assert Pattern.parse("moving:0.25:4") == Pattern(PatternCode.MOVING, hot_fraction=0.25, shift_every=4)
    assert Pattern.parse("moving:0.5") == Pattern.parse("moving:0.5:1")  # moves every epoch by default


@pytest.mark.parametrize("text", [
    "", "bogus", "SEQ", "seq:1", "stride", "stride:0", "stride:-2", "stride:1.5", "stride:x", "stride:1:2",
    "random:0", "random:-0.1", "random:65", "random:nan", "random:x", "random:0.1:2",
    "hotcold", "hotcold:1.5", "hotcold:-0.1", "hotcold:nan", "hotcold:x", "hotcold:0.5:-1", "hotcold:0.5:x",
    "hotcold:0.5:1:2", ":", "stride:",
    "moving", "moving:0", "moving:1.5", "moving:nan", "moving:0.25:0", "moving:0.25:-1", "moving:0.25:x",
    "moving:0.25:1:1",
])
def test_parse_errors(text):
    with pytest.raises(UsageError) as info:
        Pattern.parse(text)
    assert repr(text) in info.value.message
    assert PATTERN_HELP in info.value.hint


# --- sequences and counts -----------------------------------------------------------------------


def test_sequences():
    assert Pattern.parse("seq").touch_sequence(5, 0, 0).tolist() == [0, 1, 2, 3, 4]
    assert Pattern.parse("stride:3").touch_sequence(10, 0, 0).tolist() == [0, 3, 6, 9]
    assert Pattern.parse("stride:20").touch_sequence(10, 0, 0).tolist() == [0]
    hc = Pattern.parse("hotcold:0.25:3")
    assert hc.touch_sequence(8, 1, 0).tolist() == [0, 1]  # hot only
    assert hc.touch_sequence(8, 3, 0).tolist() == list(range(8))  # epoch % 3 == 0: cold too
    assert hc.touch_sequence(8, 0, 0).tolist() == list(range(8))
    assert Pattern.parse("hotcold:0.25").touch_sequence(8, 0, 0).tolist() == [0, 1]  # never cold


def test_moving_window():
    m = Pattern.parse("moving:0.25:2")
    assert [m.touch_sequence(8, e, 0).tolist() for e in range(6)] == [[0, 1], [0, 1], [2, 3], [2, 3], [4, 5], [4, 5]]
    assert m.touch_sequence(8, 8, 0).tolist() == [0, 1]  # four windows, then round again
    wraps = Pattern.parse("moving:0.3:1")  # 3 of 10 pages: the window wraps past the end
    assert [wraps.touch_sequence(10, e, 0).tolist() for e in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8],
                                                                          [9, 0, 1]]
    assert m.varies and wraps.varies and not Pattern.parse("hotcold:0.25").varies
    assert Pattern.parse("hotcold:0.25:3").varies and Pattern.parse("random").varies
    assert Pattern.parse("moving:1").touch_sequence(5, 7, 0).tolist() == [0, 1, 2, 3, 4]  # moves by all: stays
    assert Pattern.parse("moving:0.25").touch_sequence(0, 3, 0).tolist() == []


def test_touch_counts():
    r = Pattern.parse("random:0.3")
    assert r.draws(1000) == 300 and r.touch_count(1000, 0, 1) == 300
    assert r.touched(1000, 0, 1).sum() < 300  # repeats count as touches, not as pages
    assert Pattern.parse("random:0.0001").draws(10) == 1  # at least one draw
    assert Pattern.parse("random:2").touch_count(100, 0, 0) == 200
    assert Pattern.parse("stride:3").touch_count(10, 0, 0) == 4
    assert Pattern.parse("hotcold:0.333").hot_pages(10) == 3
    assert Pattern.parse("hotcold:1").hot_pages(10) == 10
    assert Pattern.parse("seq").hot_pages(10) == 10 and Pattern.parse("seq").draws(10) == 0


# --- partitions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("total,vcpus", [(1, 1), (7, 7), (10, 3), (1000, 7), (262144, 2), (1536, 5), (513, 64)])
def test_partition_boundaries(total, vcpus):
    regions = partition(total, vcpus, shared=False)
    assert len(regions) == vcpus
    assert regions[0].first_page == 0
    for a, b in zip(regions, regions[1:]):
        assert a.first_page + a.pages == b.first_page  # contiguous, no overlap, no gap
    assert regions[-1].first_page + regions[-1].pages == total
    sizes = {r.pages for r in regions}
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_partition_shared_and_too_small():
    assert partition(100, 3, shared=True) == [Region(0, 100)] * 3
    with pytest.raises(UsageError) as info:
        partition(3, 4, shared=False)
    assert "--share" in info.value.hint
    assert partition(3, 4, shared=True) == [Region(0, 3)] * 4


def test_epoch_touched_is_the_union_of_regions():
    p = Pattern.parse("random:0.5")
    regions = partition(1000, 3, shared=False)
    mask = epoch_touched(p, regions, 1000, 4, seed=9)
    want = np.zeros(1000, dtype=bool)
    for i, r in enumerate(regions):
        want[[r.first_page + x for x in ref_random_pages(random_key(9, i, 4), r.pages, p.draws(r.pages))]] = True
    assert np.array_equal(mask, want)
    stride = epoch_touched(Pattern.parse("stride:4"), regions, 1000, 0, 0)
    assert np.flatnonzero(stride)[:4].tolist() == [0, 4, 8, 12]
    assert stride[333] and stride[666] and not stride[334]  # every region restarts its stride
