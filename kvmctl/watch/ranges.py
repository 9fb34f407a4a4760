"""A watched VM's guest RAM in its mappings, and the addresses other KVM processes share with it.

Pure functions over the text of /proc/<pid>/smaps and /proc/<pid>/maps;
:mod:`kvmctl.watch.target` reads the files.

QEMU marks every RAM block ``dc`` (MADV_DONTFORK) in smaps' VmFlags, and the
RAM blocks are what KVM's memslots map; adjacent pieces of one block (the
kernel splits a VMA where madvise or mprotect changed part of it) are merged
back. A VMM that marks nothing gets its largest writable mappings, which
the report says is a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from kvmctl.kvm.memslot import Memslot

SOURCE_SMAPS = "smaps"
GUESS_MIN_BYTES = 64 << 20  # without VMM marks: writable mappings at least this large may be guest RAM
_HEAD_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S{4})\s+([0-9a-f]+)\s+\S+\s+(\d+)\s*(.*)$")
_HEX = frozenset("0123456789abcdef")
KB_KEYS = ("Rss", "Referenced")  # the smaps fields the watch samples
_NOT_RAM = ("[stack]", "[heap]", "[vvar]", "[vdso]", "[vsyscall]")


@dataclass(frozen=True)
class Mapping:
    """One VMA of /proc/<pid>/smaps (or maps: no sizes, no flags)."""

    start: int
    end: int
    perms: str  # rw-s
    offset: int
    inode: int
    path: str  # "" for anonymous memory
    flags: frozenset[str] = frozenset()  # VmFlags
    kb: dict[str, int] = field(default_factory=dict, compare=False)  # Rss, Referenced, ... in kB

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"


def parse_maps(text: str, keys: tuple[str, ...] = KB_KEYS) -> list[Mapping]:
    """/proc/<pid>/smaps or /proc/<pid>/maps text -> mappings in address order, with the kB fields ``keys``.

    A VMM has hundreds of mappings of some twenty fields each, read every
    few seconds: field lines are told from heads by their first character (a
    field name is capitalised, an address is lower-case hex) and only the
    wanted fields are converted.
    """
    out: list[Mapping] = []
    head: Mapping | None = None
    kb: dict[str, int] = {}
    prefixes = tuple(f"{k}:" for k in keys)
    for line in text.splitlines():
        if not line:
            continue
        if line[0] in _HEX:
            if m := _HEAD_RE.match(line):
                if head is not None:
                    out.append(Mapping(*head, kb=kb))
                head, kb = (int(m[1], 16), int(m[2], 16), m[3], int(m[4], 16), int(m[5]), m[6].strip()), {}
        elif head is not None and line.startswith("VmFlags:"):
            head = (*head[:6], frozenset(line.split()[1:]))
        elif head is not None and line.startswith(prefixes):
            name, _, value = line.partition(":")
            kb[name] = int(value.split()[0])
    if head is not None:
        out.append(Mapping(*head, kb=kb))
    return out


def merge_adjacent(maps: list[Mapping]) -> list[Mapping]:
    """Join mappings that continue each other: same object, next address, next file offset, same flags."""
    out: list[Mapping] = []
    for m in sorted(maps, key=lambda x: x.start):
        prev = out[-1] if out else None
        if (prev is not None and prev.end == m.start and prev.path == m.path and prev.inode == m.inode
                and prev.flags == m.flags and prev.perms == m.perms
                and (not m.inode or m.offset == prev.offset + prev.size)):
            kb = {k: prev.kb.get(k, 0) + m.kb.get(k, 0) for k in set(prev.kb) | set(m.kb)}
            out[-1] = replace(prev, end=m.end, kb=kb)
        else:
            out.append(m)
    return out


def backing_of(m: Mapping) -> str:
    if "ht" in m.flags:
        return "hugetlb"
    if m.path.startswith("/memfd:"):
        return "memfd"
    if not m.inode:
        return "anon"
    return "file"


def _path(m: Mapping) -> str | None:
    if not m.inode or m.path.startswith("/memfd:"):
        return None
    return m.path.removesuffix(" (deleted)")


@dataclass(frozen=True)
class RamGuess:
    memslots: list[Memslot]
    marked: bool  # True: the VMM marked them (dc); False: the largest writable mappings, a guess
    dropped: int = 0  # candidates left out beyond ``limit``


def guest_ram(maps: list[Mapping], limit: int) -> RamGuess:
    """The guest RAM ranges among a VMM's mappings, largest first, at most ``limit``."""
    merged = merge_adjacent(maps)
    marked = [m for m in merged if "dc" in m.flags and m.writable]
    candidates = marked or [m for m in merged if m.writable and m.size >= GUESS_MIN_BYTES and m.path not in _NOT_RAM]
    candidates.sort(key=lambda m: (-m.size, m.start))
    chosen = sorted(candidates[:limit], key=lambda m: m.start)
    slots = [Memslot.host_range(m.start, m.size, backing_of(m), SOURCE_SMAPS, _path(m)) for m in chosen]
    return RamGuess(slots, bool(marked), max(0, len(candidates) - limit))


def shared_pieces(memslots: list[Memslot], others: list[Mapping], limit: int) -> list[tuple[int, int]]:
    """[start, end) pieces of our RAM ranges that another process maps too, merged, at most ``limit``.

    Past the limit, pieces inside one memslot are widened to their hull, which
    only adds addresses: an event there is still counted as ambiguous, never
    as ours by mistake.
    """
    pieces = sorted((max(m.hva_start, o.start), min(m.hva_end, o.end)) for m in memslots for o in others
                    if o.start < m.hva_end and o.end > m.hva_start)
    merged: list[tuple[int, int]] = []
    for start, end in pieces:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    if len(merged) <= limit:
        return merged
    hulls = []
    for m in memslots:
        inside = [p for p in merged if m.hva_start <= p[0] < m.hva_end]
        if inside:
            hulls.append((inside[0][0], max(p[1] for p in inside)))
    return hulls[:limit]


def sum_kb(maps: list[Mapping], memslots: list[Memslot], key: str) -> int:
    """Bytes of smaps field ``key`` over the mappings inside the memslots."""
    return 1024 * sum(m.kb.get(key, 0) for m in maps
                      if any(s.hva_start <= m.start and m.end <= s.hva_end for s in memslots))


def with_backing(memslots: list[Memslot], maps: list[Mapping]) -> list[Memslot]:
    """Memslots named by the VMM get the backing kind and file of the mapping that holds them."""
    out = []
    for s in memslots:
        m = next((m for m in maps if m.start <= s.hva_start < m.end), None)
        out.append(s if m is None else replace(s, backing=backing_of(m), path=_path(m)))
    return out
