"""Pure logic of the agers: parsers, command builders, bitmaps, decisions on fake sysfs trees."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kvmctl import cleanup
from kvmctl.agers import AgerContext, PassRecord, ager_class, get_ager, list_agers
from kvmctl.agers.base import page_gfns, page_hvas
from kvmctl.agers.memcg import squeeze_target
from kvmctl.agers.mglru import (
    aging_command,
    eviction_command,
    parse_lru_gen,
)
from kvmctl.agers.page_idle import (KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, IdleBitmap, PageIdleAger, decode_pagemap,
                                    flag_pfns, word_runs)
from kvmctl.agers.passive import PassiveAger
from kvmctl.kvm import Memslot
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.probe.memory import parse_lru_gen_features, swap_total_bytes


@pytest.fixture(autouse=True)
def nothing_left_registered():
    yield
    assert cleanup.run_all() == []


# --- registry and context ---------------------------------------------------------------------


def test_registry_names_and_unknown_ager():
    assert list_agers() == ["memcg", "mglru", "page_idle", "damon", "passive"]
    for name in list_agers():
        assert get_ager(name).name == name
    with pytest.raises(UsageError) as exc:
        get_ager("kswapd")
    assert "memcg" in (exc.value.hint or "")


def test_context_accepts_plain_tuples_and_checks_the_page_count():
    ctx = AgerContext(None, 1, [Memslot.at(0, 0x100000, 8192, 0x10000000), Memslot.at(1, 0x200000, 4096, 0x20000000)])
    assert ctx.guest_pages == 3
    assert page_gfns(ctx.memslots).tolist() == [0x100, 0x101, 0x200]
    assert page_hvas(ctx.memslots).tolist() == [0x10000000, 0x10001000, 0x20000000]
    with pytest.raises(UsageError):
        AgerContext(None, 1, [Memslot.at(0, 0, 8192, 0)], guest_pages=5)


def test_pass_record_to_dict_summarises_bitmaps():
    rec = PassRecord("page_idle", 2, start_ns=10, end_ns=25, idle=np.array([True, False, True]),
                     observed=np.array([True, True, False]))
    d = rec.to_dict()
    assert d["duration_ns"] == 15 and d["bitmap_pages"] == 3 and d["observed_pages"] == 2
    assert "idle" not in d


def test_passive_pass_marks_a_window_and_claims_no_threads():
    ager = PassiveAger()
    assert ager.availability().ok
    ager.prepare(AgerContext(None, os.getpid(), [], options={"pass_s": 0.01}))
    rec = ager.run_pass(0)
    ager.restore()
    ager.restore()
    assert rec.duration_ns >= 10_000_000 and rec.thread_ids == []


def test_run_pass_before_prepare_is_a_usage_error():
    with pytest.raises(UsageError):
        PassiveAger().run_pass(0)


# --- memcg ------------------------------------------------------------------------------------


@pytest.mark.parametrize("usage,squeeze,target,expect", [
    (100 << 20, 0.5, None, 50 << 20),
    (100 << 20, 0.25, None, 75 << 20),
    (100 << 20, None, None, 50 << 20),
    (100 << 20, 0.5, 30 << 20, 30 << 20),
    (10_000_000, 0.5, None, 4_997_120),  # page aligned down
])
def test_squeeze_target(usage, squeeze, target, expect):
    assert squeeze_target(usage, squeeze, target) == expect


@pytest.mark.parametrize("squeeze", [0, 1, 1.5, -0.1])
def test_squeeze_out_of_range(squeeze):
    with pytest.raises(UsageError):
        squeeze_target(1 << 30, squeeze, None)


def test_swap_total(tmp_path):
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n")
    assert swap_total_bytes(swaps) == 0
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swap file 1024 0 -2\n/dev/vdb partition 2048 0 -3\n")
    assert swap_total_bytes(swaps) == 3072 * 1024


# --- MGLRU ------------------------------------------------------------------------------------

LRU_GEN = """\
memcg     1 /
  node     0
         0      12345      10     200
         1       2345       0     300
         2        345       5      50
memcg    42 /process_api/abc/kvmctl-7-a
  node     0
         3       1000       0     100
         4        100       0      20
  node     1
         3       1000       0       7
         4        100       0       1
         5         10       0       2
memcg     0 /dying
"""


def test_parse_lru_gen():
    memcgs = parse_lru_gen(LRU_GEN)
    assert set(memcgs) == {"/", "/process_api/abc/kvmctl-7-a"}  # id 0 (dying) is skipped
    ours = memcgs["/process_api/abc/kvmctl-7-a"]
    assert ours.memcg_id == 42 and sorted(ours.nodes) == [0, 1]
    assert [g.gen for g in ours.nodes[1]] == [3, 4, 5]
    assert ours.pages() == 130
    assert ours.pages_in({0: 4, 1: 5}) == 20 + 2
    assert ours.pages_in({0: 3}) == 100


def test_parse_lru_gen_full_extra_columns_and_bad_lines():
    full = "memcg 3 /x\n node 0\n 7 10 1 2 extra columns here\n"
    assert parse_lru_gen(full)["/x"].nodes[0][0].nr_file == 2
    with pytest.raises(KvmctlError):
        parse_lru_gen("memcg 3 /x\n node zero\n")


def test_lru_gen_commands_match_the_selftest_protocol():
    assert aging_command(42, 0, 4) == "+ 42 0 4 1 1"
    assert aging_command(42, 1, 5, can_swap=0, force_scan=0) == "+ 42 1 5 0 0"
    assert eviction_command(42, 0, 3, 0) == "- 42 0 3 0"
    assert eviction_command(42, 0, 3, 60, 256) == "- 42 0 3 60 256"
    assert parse_lru_gen_features("0x0007\n") == 7 and parse_lru_gen_features("0x0000") == 0


def test_mglru_pass_issues_one_aging_command_per_node_and_restores_enabled(tmp_path, monkeypatch):
    from kvmctl.agers.mglru import MglruAger
    from kvmctl.cgroup import CgroupVersion, ExperimentCgroup, Memcg

    enabled, debugfs = tmp_path / "enabled", tmp_path / "lru_gen"
    enabled.write_text("0x0000\n")
    debugfs.write_text(LRU_GEN)
    ager = MglruAger(enabled, debugfs)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert ager.availability().ok
    written: list[tuple[Path, str]] = []
    real_write = MglruAger._write

    def record_write(self, path, text):
        written.append((path, text))
        if path == enabled:  # the knob is a plain file here; the debugfs file must keep its listing
            real_write(self, path, text)

    monkeypatch.setattr(MglruAger, "_write", record_write)
    parent = Memcg(CgroupVersion.V1, tmp_path, "/process_api/abc")
    cg = ExperimentCgroup(parent.child("kvmctl-7-a"), parent)
    ager.prepare(AgerContext(cg, 1, [Memslot.at(0, 0, 4096, 0)]))
    assert enabled.read_text() == "0x3"
    rec = ager.run_pass(0)
    assert rec.lru_gen_commands == ["+ 42 0 4 1 1", "+ 42 1 5 1 1"]
    assert [t for p, t in written if p == debugfs] == ["+ 42 0 4 1 1\n", "+ 42 1 5 1 1\n"]
    assert rec.idle is None and len(rec.generations) == 5
    # the fake debugfs does not age: the generations named in the commands hold 20 + 2 pages
    assert rec.pages_found_idle == 130 - 22
    ager.restore()
    assert enabled.read_text() == "0x0000"


# --- page_idle --------------------------------------------------------------------------------


def test_decode_pagemap():
    entries = np.array([(1 << 63) | 0x1234, 0, (1 << 63) | (1 << 62) | 0x7, (1 << 61) | 5], dtype=np.uint64)
    present, pfns = decode_pagemap(entries)
    assert present.tolist() == [True, False, True, False]
    assert pfns.tolist() == [0x1234, 0, 0x7, 0]


def test_word_runs_bridge_small_gaps_only():
    words = np.array([1, 2, 3, 10, 500, 501], dtype=np.uint64)
    assert word_runs(words, gap=8) == [(1, 10), (500, 2)]
    assert word_runs(np.zeros(0, dtype=np.uint64)) == []


def test_idle_bitmap_sets_exactly_the_bits_of_the_given_pfns(tmp_path):
    path = tmp_path / "bitmap"
    path.write_bytes(bytes(8 * 1024))
    bm = IdleBitmap(path)
    pfns = np.array([0, 63, 64, 130, 5000, 5001, 63], dtype=np.uint64)
    assert bm.mark(pfns) == 6
    words = np.frombuffer(path.read_bytes(), dtype=np.uint64)
    assert words[0] == (1 | (1 << 63)) and words[1] == 1 and words[2] == (1 << 2)
    assert words[78] == (1 << 8) | (1 << 9)
    assert int(np.count_nonzero(words)) == 4
    idle, checked = bm.read(np.array([63, 62, 5001, 130, 7000], dtype=np.uint64))
    assert idle.tolist() == [True, False, True, True, False] and checked.all()


def test_idle_bitmap_loops_on_the_kernels_page_sized_short_io(tmp_path, monkeypatch):
    """The kernel moves at most 4 KiB (32,768 PFNs) per read or write; past max_pfn a read returns nothing."""
    import kvmctl.agers.page_idle as page_idle

    path = tmp_path / "bitmap"
    path.write_bytes(bytes(8 * 2048))  # max_pfn = 131,072
    real_pread, real_pwrite = os.pread, os.pwrite
    monkeypatch.setattr(page_idle.os, "pread", lambda fd, n, off: real_pread(fd, min(n, 4096), off))
    monkeypatch.setattr(page_idle.os, "pwrite", lambda fd, data, off: real_pwrite(fd, data[:4096], off))
    monkeypatch.setattr(page_idle, "BITMAP_CHUNK_WORDS", 1024)  # runs longer than one kernel page
    bm = IdleBitmap(path)
    pfns = np.arange(0, 131_072, 2, dtype=np.uint64)  # 65,536 PFNs over 4 pages of the bitmap
    assert bm.mark(pfns) == pfns.size
    words = np.frombuffer(path.read_bytes(), dtype=np.uint64)
    assert (words == np.uint64(0x5555555555555555)).all()  # every even PFN marked, none missed
    asked = np.concatenate([pfns, np.array([131_072, 200_000], dtype=np.uint64)])
    idle, checked = bm.read(asked)
    assert idle[: pfns.size].all() and checked[: pfns.size].all()
    assert not checked[pfns.size:].any() and not idle[pfns.size:].any()  # past max_pfn: not checked, not scored


def _write_pagemap(path: Path, hva: int, entries: list[int]) -> None:
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.seek(hva // 4096 * 8)
        f.write(np.array(entries, dtype=np.uint64).tobytes())


def test_page_idle_passes_on_fake_pagemap_and_bitmap(tmp_path, monkeypatch):
    """Pass 0 marks, pass 1 reads back; an 'accessed' page (bit cleared) comes back young."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    proc, bitmap = tmp_path / "proc", tmp_path / "bitmap"
    (proc / "77").mkdir(parents=True)
    bitmap.write_bytes(bytes(8 * 64))
    hva = 0x40000000
    P = 1 << 63
    _write_pagemap(proc / "77" / "pagemap", hva, [P | 100, P | 101, 0, P | 300])
    ager = PageIdleAger(bitmap, proc)
    assert ager.availability().ok
    ager.prepare(AgerContext(None, 77, [Memslot.at(0, 0, 4 * 4096, hva)]))
    rec0 = ager.run_pass(0)
    assert rec0.pages_marked_idle == 3 and rec0.idle is None
    words = np.frombuffer(bitmap.read_bytes(), dtype=np.uint64).copy()
    words[101 // 64] &= ~np.uint64(1 << (101 % 64))  # the guest touched pfn 101: the kernel clears its idle bit
    bitmap.write_bytes(words.tobytes())
    _write_pagemap(proc / "77" / "pagemap", hva, [P | 100, P | 101, P | 200, P | 999])  # pfn 300 moved to 999
    rec1 = ager.run_pass(1)
    assert rec1.observed.tolist() == [True, True, False, False]
    assert rec1.idle.tolist() == [True, False, False, False]
    assert rec1.pages_found_idle == 1 and rec1.pages_marked_idle == 4
    assert any("moved" in n for n in rec1.notes)
    ager.restore()


def test_page_idle_without_pfns_asks_for_root(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    proc, bitmap = tmp_path / "proc", tmp_path / "bitmap"
    (proc / "5").mkdir(parents=True)
    bitmap.write_bytes(bytes(8))
    _write_pagemap(proc / "5" / "pagemap", 0x1000, [1 << 63])  # present, PFN hidden
    ager = PageIdleAger(bitmap, proc)
    ager.prepare(AgerContext(None, 5, [Memslot.at(0, 0, 4096, 0x1000)]))
    with pytest.raises(KvmctlError) as exc:
        ager.run_pass(0)
    assert "root" in (exc.value.hint or "")
    ager.restore()


def test_page_idle_absent_bitmap_is_explained(tmp_path):
    avail = PageIdleAger(tmp_path / "nope").availability()
    assert not avail.ok and "CONFIG_IDLE_PAGE_TRACKING" in avail.remedy


def test_stat_delta_keeps_event_counters_only():
    from kvmctl.agers.memcg import stat_delta

    before = {"workingset_refault_file": 10, "pgmajfault": 1, "cache": 4096, "total_pgmajfault": 5}
    after = {"workingset_refault_file": 25, "pgmajfault": 1, "cache": 0, "total_pgmajfault": 9}
    assert stat_delta(before, after) == {"workingset_refault_file": 15, "pgmajfault": 0}


def test_thp_tails_take_their_heads_flag():
    head, tail = int(KPF_COMPOUND_HEAD), int(KPF_COMPOUND_TAIL)
    pfns = np.array([7, 1024, 1025, 1535, 2049, 4096 + 3], dtype=np.uint64)
    flags = np.array([0, head, tail, tail, tail, tail], dtype=np.uint64)
    known_heads = {1024: head, 2048: 0, 4096: head}  # 2048 is no compound head: 2049 has no usable flag
    got = flag_pfns(pfns, flags, lambda c: np.array([known_heads[int(x)] for x in c], dtype=np.uint64))
    assert got.tolist() == [7, 1024, 1024, 1024, 0, 4096]


def test_page_idle_marks_and_reads_a_thp_through_its_head(tmp_path, monkeypatch):
    """Like the kernel: a tail PFN has no idle flag of its own; the head's verdict covers all 512 pages."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    proc, bitmap = tmp_path / "proc", tmp_path / "bitmap"
    (proc / "9").mkdir(parents=True)
    bitmap.write_bytes(bytes(8 * 64))
    flags = np.zeros(2048, dtype=np.uint64)
    flags[1024] = KPF_COMPOUND_HEAD
    flags[1025:1536] = KPF_COMPOUND_TAIL
    (proc / "kpageflags").write_bytes(flags.tobytes())
    hva, P = 0x40000000, 1 << 63
    _write_pagemap(proc / "9" / "pagemap", hva, [P | pfn for pfn in range(1024, 1536)] + [P | 7])
    ager = PageIdleAger(bitmap, proc)
    ager.prepare(AgerContext(None, 9, [Memslot.at(0, 0, 513 * 4096, hva)]))
    rec0 = ager.run_pass(0)
    assert rec0.pages_marked_idle == 513
    words = np.frombuffer(bitmap.read_bytes(), dtype=np.uint64)
    assert int(np.count_nonzero(words)) == 2 and words[1024 // 64] == 1 and words[0] == 1 << 7  # the head, pfn 7
    assert any("512 guest pages sit in huge pages" in n for n in rec0.notes)
    rec1 = ager.run_pass(1)
    assert rec1.observed.all() and rec1.idle.all()
    ager.restore()


class _Caps:
    """The one verdict the MGLRU ager asks the probe."""

    def __init__(self, hook: bool):
        from kvmctl.probe.item import Item

        self.test_clear_young = Item(hook, {"symbol": "kvm_arch_test_clear_young"} if hook else None)


def _mglru_with_cap(tmp_path, monkeypatch, hook: bool, options: dict, start: str = "0x0007\n"):
    """A prepared MglruAger over fake knobs whose enabled file keeps bit 3 only when ``hook``."""
    from kvmctl.agers.mglru import MglruAger
    from kvmctl.cgroup import CgroupVersion, ExperimentCgroup, Memcg

    enabled, debugfs = tmp_path / "enabled", tmp_path / "lru_gen"
    enabled.write_text(start)
    debugfs.write_text(LRU_GEN)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def write(self, path, text):
        if path == enabled:  # a kernel without the series shows no bit 3
            value = int(text, 0) if hook else int(text, 0) & 0x7
            path.write_text(f"{value:#06x}\n")

    monkeypatch.setattr(MglruAger, "_write", write)
    parent = Memcg(CgroupVersion.V1, tmp_path, "/process_api/abc")
    ager = MglruAger(enabled, debugfs)
    ctx = AgerContext(ExperimentCgroup(parent.child("kvmctl-7-a"), parent), 1, [Memslot.at(0, 0, 4096, 0)],
                      options=options, caps=_Caps(hook))
    return ager, ctx, enabled


def test_mglru_turns_the_test_clear_young_cap_on_where_the_kernel_has_it(tmp_path, monkeypatch):
    ager, ctx, enabled = _mglru_with_cap(tmp_path, monkeypatch, True, {})
    ager.prepare(ctx)
    assert enabled.read_text() == "0x000f\n"
    assert ager.settings == {"lru_gen_cap": "on", "lru_gen_enabled": "0x000f"}
    ager.restore()
    assert enabled.read_text() == "0x0007\n"


def test_mglru_cap_off_is_the_a_side_of_a_comparison(tmp_path, monkeypatch):
    ager, ctx, enabled = _mglru_with_cap(tmp_path, monkeypatch, True, {"test_clear_young": "off"}, "0x000f\n")
    ager.prepare(ctx)
    assert enabled.read_text() == "0x0007\n" and ager.settings["lru_gen_cap"] == "off"
    ager.restore()
    assert enabled.read_text() == "0x000f\n"


def test_mglru_keep_leaves_the_cap_alone(tmp_path, monkeypatch):
    ager, ctx, enabled = _mglru_with_cap(tmp_path, monkeypatch, True, {"test_clear_young": "keep"})
    ager.prepare(ctx)
    assert enabled.read_text() == "0x0007\n" and ager.settings["lru_gen_cap"] == "off"
    ager.restore()


def test_mglru_refuses_a_cap_the_kernel_lacks(tmp_path, monkeypatch):
    from kvmctl.errors import UnsupportedError, UsageError

    ager, ctx, enabled = _mglru_with_cap(tmp_path, monkeypatch, False, {"test_clear_young": 1})
    with pytest.raises(UnsupportedError, match="lacks the test_clear_young series"):
        ager.prepare(ctx)
    assert enabled.read_text() == "0x0007\n"
    ager, ctx, _ = _mglru_with_cap(tmp_path, monkeypatch, True, {"test_clear_young": "maybe"})
    with pytest.raises(UsageError, match="not one of on, off, keep"):
        ager.prepare(ctx)
    # without the series and without the option nothing changes and nothing is claimed
    ager, ctx, enabled = _mglru_with_cap(tmp_path, monkeypatch, False, {})
    ager.prepare(ctx)
    assert enabled.read_text() == "0x0007\n" and ager.settings == {}
    ager.restore()


@pytest.mark.parametrize("name", list_agers())
def test_every_ager_declares_the_options_it_reads(name):
    """Each key an ager's code reads is declared, so a typo is refused and not silently ignored."""
    import inspect
    import re

    cls = ager_class(name)
    source = inspect.getsource(inspect.getmodule(cls))
    read = set(re.findall(r'(?:_option|options\.get)\("(\w+)"', source)) | set(re.findall(r'"(\w+)" in ctx\.options', source))
    assert read <= {o.key for o in cls.options}, read - {o.key for o in cls.options}


def test_ager_options_are_checked_and_normalised():
    memcg, mglru = ager_class("memcg"), ager_class("mglru")
    assert memcg.check_options({"squeeze": 0.25, "steps": 4.0}) == {"squeeze": 0.25, "steps": 4}
    assert mglru.check_options({"evict": "yes", "test_clear_young": "0"}) == {"evict": True, "test_clear_young": "off"}
    for bad, phrase in (({"squeze": 0.5}, "has no option 'squeze'"), ({"squeeze": 1.0}, "must be a fraction"),
                        ({"squeeze": "x"}, "has the wrong type"), ({"steps": 2.5}, "whole number"),
                        ({"step_pause_s": -1}, "at least 0")):
        with pytest.raises(UsageError, match=phrase):
            memcg.check_options(bad)
    with pytest.raises(UsageError, match="on, off, keep"):
        mglru.check_options({"test_clear_young": "maybe"})
