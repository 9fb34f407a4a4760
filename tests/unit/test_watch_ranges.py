"""Finding a watched VM's RAM in its mappings, the addresses other KVM processes share, the KVM descriptors."""

from __future__ import annotations

from kvmctl.kvm.memslot import Memslot
from kvmctl.watch.qmp import RamSegment, parse_flat_ram, parse_gpa2hva, ram_memslots
from kvmctl.watch.ranges import guest_ram, merge_adjacent, parse_maps, shared_pieces, sum_kb, with_backing
from kvmctl.watch.signals import refaults, stat_deltas
from kvmctl.watch.target import classify_fds

MIB = 1 << 20

SMAPS = """\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:00 100 /usr/bin/qemu-system-x86_64
Rss:                 800 kB
Referenced:          800 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0010000000 rw-s 00000000 fe:00 42 /var/tmp/guest.img
Rss:              131072 kB
Referenced:        65536 kB
VmFlags: rd wr sh mr mw me ms dc hg
7f0010000000-7f0020000000 rw-s 10000000 fe:00 42 /var/tmp/guest.img
Rss:              262144 kB
Referenced:            4 kB
VmFlags: rd wr sh mr mw me ms dc hg
7f0020000000-7f0020200000 rw-p 00000000 00:00 0
Rss:                2048 kB
VmFlags: rd wr mr mw me ac sd dc hg
7f0030000000-7f0038000000 rw-p 00000000 00:00 0
Rss:                   0 kB
VmFlags: rd wr mr mw me ac sd
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
VmFlags: rd wr mr mw me gd ac
"""


def test_smaps_parse_reads_heads_sizes_and_flags():
    maps = parse_maps(SMAPS)
    assert len(maps) == 6
    ram = maps[1]
    assert (ram.start, ram.end, ram.perms, ram.offset, ram.inode, ram.path) == (
        0x7F0000000000, 0x7F0010000000, "rw-s", 0, 42, "/var/tmp/guest.img")
    assert ram.kb == {"Rss": 131072, "Referenced": 65536}
    assert {"dc", "hg", "sh"} <= ram.flags
    assert maps[5].path == "[stack]"


def test_pieces_of_one_file_mapping_merge_but_not_across_offsets_or_objects():
    maps = parse_maps(SMAPS)
    merged = merge_adjacent(maps)
    assert [(m.start, m.size) for m in merged if m.inode == 42] == [(0x7F0000000000, 512 * MIB)]
    assert merged[1].kb["Rss"] == 131072 + 262144
    gap = maps[2].__class__(maps[2].start, maps[2].end, maps[2].perms, 0x99 << 20, 42, maps[2].path, maps[2].flags)
    assert len(merge_adjacent([maps[1], gap])) == 2  # the file offset does not continue


def test_guest_ram_takes_the_ranges_the_vmm_marked():
    guess = guest_ram(parse_maps(SMAPS), limit=8)
    assert guess.marked
    assert [(m.hva_start, m.size, m.backing, m.path, m.source) for m in guess.memslots] == [
        (0x7F0000000000, 512 * MIB, "file", "/var/tmp/guest.img", "smaps"),
        (0x7F0020000000, 2 * MIB, "anon", None, "smaps")]
    assert all(m.slot is None and m.gpa_start is None and m.gfn_start is None for m in guess.memslots)
    top = guest_ram(parse_maps(SMAPS), limit=1)
    assert [m.size for m in top.memslots] == [512 * MIB] and top.dropped == 1


def test_without_marks_the_largest_writable_mappings_are_a_guess():
    unmarked = SMAPS.replace(" dc", "")
    guess = guest_ram(parse_maps(unmarked), limit=8)
    assert not guess.marked
    assert [m.size for m in guess.memslots] == [512 * MIB, 128 * MIB]  # not the stack, not the 2 MiB one


def test_smaps_sums_count_only_mappings_inside_the_ranges():
    maps = parse_maps(SMAPS)
    slots = guest_ram(maps, 8).memslots[:1]
    assert sum_kb(maps, slots, "Rss") == (131072 + 262144) * 1024
    assert sum_kb(maps, slots, "Referenced") == (65536 + 4) * 1024


def test_shared_pieces_are_intersections_merged_and_capped_to_hulls():
    ours = [Memslot.host_range(0x1000_0000, 0x1000_0000, "file", "smaps"),
            Memslot.host_range(0x5000_0000, 0x100_0000, "anon", "smaps")]
    others = parse_maps("10000000-10100000 rw-p 00000000 00:00 0\n"
                        "10100000-10200000 r--p 00000000 00:00 0\n"
                        "1f000000-30000000 rw-p 00000000 00:00 0\n"
                        "40000000-41000000 rw-p 00000000 00:00 0\n"
                        "50800000-50900000 rw-p 00000000 00:00 0\n")
    assert shared_pieces(ours, others, 16) == [(0x1000_0000, 0x1020_0000), (0x1F00_0000, 0x2000_0000),
                                               (0x5080_0000, 0x5090_0000)]
    assert shared_pieces(ours, others, 2) == [(0x1000_0000, 0x2000_0000), (0x5080_0000, 0x5090_0000)]
    assert shared_pieces(ours, parse_maps("60000000-70000000 rw-p 00000000 00:00 0\n"), 16) == []


def test_kvm_descriptors_are_read_from_fd_links():
    fds = classify_fds({3: "/dev/kvm", 12: "anon_inode:kvm-vm", 14: "anon_inode:kvm-vcpu:1",
                        13: "anon_inode:kvm-vcpu:0", 20: "anon_inode:[eventfd]", 21: "anon_inode:kvm-vcpu-stats:0"})
    assert fds.vm == [12] and fds.vcpus == {0: 13, 1: 14}
    assert classify_fds({3: "/dev/null"}).vm == []


MTREE = """\
FlatView #0
 AS "I/O", root: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): ram KVM
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom KVM
  0000000000100000-000000001fffffff (prio 0, ram): ram @0000000000100000 KVM
  0000000100000000-000000013fffffff (prio 0, ram): node1 @0000000000000000 KVM
"""


def test_qmp_flat_view_and_gpa2hva_parse():
    segs = parse_flat_ram(MTREE)
    assert segs == [RamSegment(0, 0xC0000, "ram", 0), RamSegment(0x100000, 0x20000000, "ram", 0x100000),
                    RamSegment(0x100000000, 0x140000000, "node1", 0)]
    assert parse_gpa2hva("Host virtual address for 0x0 (ram) is 0x7fedc3fff000\r\n") == 0x7FEDC3FFF000
    assert parse_gpa2hva("Memory at address 0x0 is not RAM") is None


def test_qmp_memslots_place_each_backend_by_its_hva_and_gpa():
    segs = parse_flat_ram(MTREE)
    memdevs = [{"id": "ram", "size": 512 * MIB}, {"id": "node1", "size": 1 << 30}, {"id": "unplugged", "size": MIB}]
    slots = ram_memslots(memdevs, segs, {0: 0x7F00_0000_0000, 0x100000000: 0x7F10_0000_0000}, {})
    assert [(m.hva_start, m.size, m.gpa_start, m.gpa_end, m.source, m.slot) for m in slots] == [
        (0x7F00_0000_0000, 512 * MIB, 0, 512 * MIB, "qmp", None),
        (0x7F10_0000_0000, 1 << 30, 0x100000000, 0x140000000, "qmp", None)]
    maps = parse_maps("7f0000000000-7f0020000000 rw-s 00000000 fe:00 7 /dev/shm/vm (deleted)\n")
    assert [(m.backing, m.path) for m in with_backing(slots, maps)] == [("file", "/dev/shm/vm"), ("anon", None)]


def test_memcg_refaults_and_deltas():
    assert refaults({"workingset_refault_anon": 2, "workingset_refault_file": 5}) == 7
    assert refaults({"total_workingset_refault": 9}) == 9
    assert refaults({"cache": 1}) is None
    assert stat_deltas({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 1}) == {"b": 3}


def test_query_stats_answers_sum_over_vcpus():
    from kvmctl.watch.qmp import sum_stats

    answer = [{"provider": "kvm", "qom-path": f"/machine/unattached/device[{i}]",
               "stats": [{"name": "exits", "value": 10 + i}, {"name": "blocking", "value": bool(i)},
                         {"name": "halt_wait_hist", "value": [1, i, 0]}]} for i in range(2)]
    assert sum_stats(answer) == {"exits": 21, "blocking": 1, "halt_wait_hist": [2, 1, 0]}


def test_vm_processes_are_named_by_kvms_debugfs_directories(tmp_path):
    from kvmctl.watch.target import vm_pids_in_debugfs

    for name in ("4711-12", "4711-15", "815-9"):
        (tmp_path / name).mkdir()
    (tmp_path / "pages_4k").write_text("0\n")  # the module-wide stats files beside them
    (tmp_path / "vcpu").mkdir()
    assert vm_pids_in_debugfs(str(tmp_path)) == {4711, 815}
    assert vm_pids_in_debugfs(None) is None and vm_pids_in_debugfs(str(tmp_path / "gone")) is None
