"""Memory facts of the host: memcg, swap, THP, hugetlb pools, and what each ager needs.

MGLRU (``lru_gen``), idle page tracking and DAMON are detected here; the
agers turn these items into their availability, so ``kvmctl info`` and an
experiment give the same answer. Under the DAMON sysfs tree this module only
ever reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import KvmctlError
from kvmctl.probe.item import ROOT_REMEDY, Item, exists, is_dir, missing, ok, read, read_strip
from kvmctl.probe.kernel import KernelConfig, parse_bracketed_choice
from kvmctl.units import format_size


@dataclass(frozen=True)
class MemoryCaps:
    memcg: Item
    swap: Item
    thp: Item
    hugetlb: dict[str, Item]  # "2M" / "1G" -> pages reserved and free
    mglru: Item
    page_idle: Item
    damon: Item
    foreign_kdamond: Item  # available == a kdamond that is not ours is running
    kpageflags: Item = missing("not probed")  # /proc/kpageflags with pagemap PFNs (value: its path)


def host_memory_bytes() -> int:
    """The host's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- memcg -----------------------------------------------------------------------------------


def probe_memcg() -> Item:
    """This process's memory cgroup, and whether kvmctl can create (and squeeze) cgroups below it."""
    from kvmctl.cgroup import CgroupVersion, own_memcg

    try:
        memcg = own_memcg()
    except KvmctlError as err:
        return missing(err.message, err.hint, source="/proc/self/cgroup")
    value = {"version": f"v{int(memcg.version)}", "path": str(memcg.path), "rel": memcg.rel,
             "writable": os.access(memcg.path, os.W_OK)}
    if not value["writable"]:
        return missing(f"cannot create cgroups below {memcg.path}: permission denied",
                       f"{ROOT_REMEDY}, or delegate that cgroup to your user", value, "/proc/self/cgroup")
    if memcg.version is CgroupVersion.V2 and not exists(memcg.path / "memory.reclaim"):
        return missing("cgroup v2 has no memory.reclaim (kernel before 5.19)", "use a kernel >= 5.19", value,
                       "/proc/self/cgroup")
    return ok(value, source="/proc/self/cgroup")


# --- swap and THP ----------------------------------------------------------------------------

SWAPS = Path("/proc/swaps")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class SwapArea:
    name: str
    type: str
    size_bytes: int
    used_bytes: int


def parse_swaps(text: str) -> list[SwapArea]:
    """/proc/swaps (sizes in KiB) -> swap areas; the header line is skipped."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
            out.append(SwapArea(parts[0], parts[1], int(parts[2]) * 1024, int(parts[3]) * 1024))
    return out


def swap_total_bytes(swaps: Path = SWAPS) -> int:
    """Sum of active swap sizes (0 when there is none, or /proc/swaps cannot be read)."""
    return sum(a.size_bytes for a in parse_swaps(read(swaps)[0] or ""))


def probe_swap(swaps: Path = SWAPS) -> Item:
    text, why = read(swaps)
    if text is None:
        return missing(why or f"{swaps} unreadable", None, source=str(swaps))
    areas = parse_swaps(text)
    total = sum(a.size_bytes for a in areas)
    value = {"total_bytes": total, "used_bytes": sum(a.used_bytes for a in areas), "areas": [a.name for a in areas]}
    if total:
        return ok(value, source=str(swaps))
    return missing("no swap: reclaim never scans anonymous guest memory",
                   "use file-backed guest memory (--backing file) or add swap (swapon)", value, str(swaps))


def probe_thp() -> Item:
    text, why = read(THP_ENABLED)
    mode = parse_bracketed_choice(text) if text else None
    if mode is None:
        return missing(why or "unparsable THP mode", "use a kernel with CONFIG_TRANSPARENT_HUGEPAGE=y",
                       source=str(THP_ENABLED))
    if mode == "never":
        return missing("THP is disabled (never)", f"echo madvise > {THP_ENABLED}", mode, str(THP_ENABLED))
    return ok(mode, source=str(THP_ENABLED))


# --- hugetlb ---------------------------------------------------------------------------------

HUGEPAGES = Path("/sys/kernel/mm/hugepages")


def hugetlb_dir(page_size: int, root: Path = HUGEPAGES) -> Path:
    return root / f"hugepages-{page_size // 1024}kB"


def hugetlb_pool(page_size: int, root: Path = HUGEPAGES) -> tuple[int, int]:
    """(reserved, free) hugetlb pages of ``page_size``, read now (the pool changes); (0, 0) if unknown."""
    d = hugetlb_dir(page_size, root)
    reserved, free = (read_strip(d / name) for name in ("nr_hugepages", "free_hugepages"))
    return int(reserved or 0), int(free or 0)


def probe_hugetlb(root: Path = HUGEPAGES) -> dict[str, Item]:
    out: dict[str, Item] = {}
    sizes = sorted(int(d.name[10:-2]) * 1024 for d in root.glob("hugepages-*kB")) if exists(root) else []
    for size in sizes:
        d, key = hugetlb_dir(size, root), format_size(size)
        total, free = hugetlb_pool(size, root)
        value = {"size_bytes": size, "total": total, "free": free}
        if free > 0:
            out[key] = ok(value, source=str(d))
        else:
            why = "none reserved" if total == 0 else f"all {total} in use"
            out[key] = missing(f"no free {key} hugetlb pages ({why})", f"reserve some: echo N > {d}/nr_hugepages",
                               value, str(d))
    return out


# --- MGLRU and idle page tracking ------------------------------------------------------------

LRU_GEN_ENABLED = Path("/sys/kernel/mm/lru_gen/enabled")
LRU_GEN_DEBUGFS = Path("/sys/kernel/debug/lru_gen")
# Feature bits of lru_gen/enabled (include/linux/mmzone.h) that aging with force_scan needs.
LRU_GEN_CORE = 0x1
LRU_GEN_MM_WALK = 0x2
LRU_GEN_REQUIRED = LRU_GEN_CORE | LRU_GEN_MM_WALK
# The test_clear_young series' cap: harvest KVM's accessed bits without mmu_lock (kernels/test-clear-young).
LRU_GEN_SECONDARY_YOUNG = 0x8
PAGE_IDLE_BITMAP = Path("/sys/kernel/mm/page_idle/bitmap")


def parse_lru_gen_features(text: str) -> int:
    """lru_gen/enabled ('0x0007') -> the feature bits."""
    return int(text.strip() or "0", 0)


def probe_mglru(config: KernelConfig, enabled: Path = LRU_GEN_ENABLED, debugfs: Path = LRU_GEN_DEBUGFS) -> Item:
    """MGLRU and its debugfs interface; features it lacks are a caveat, since the ager switches them on."""
    text, why = read(enabled)
    if text is None:
        off = config.get("CONFIG_LRU_GEN") == "n"
        return missing("CONFIG_LRU_GEN is not set" if off else (why or f"{enabled} unreadable"),
                       "boot a kernel with CONFIG_LRU_GEN=y", source=str(enabled))
    features = text.strip()
    if not exists(debugfs):
        return missing(f"MGLRU is on but {debugfs} is absent (debugfs not mounted or not root)",
                       f"mount -t debugfs nodev /sys/kernel/debug; {ROOT_REMEDY}", features, str(enabled))
    if parse_lru_gen_features(features) & LRU_GEN_REQUIRED != LRU_GEN_REQUIRED:
        return ok(features, source=str(enabled),
                  reason=f"MGLRU features are {features}: the mglru ager switches on {LRU_GEN_REQUIRED:#x} for its "
                         "passes and restores them",
                  remedy=f"echo y > {enabled}")
    return ok(features, source=str(enabled))


def probe_page_idle(config: KernelConfig, bitmap: Path = PAGE_IDLE_BITMAP) -> Item:
    if not exists(bitmap):
        off = config.get("CONFIG_IDLE_PAGE_TRACKING") == "n"
        return missing("CONFIG_IDLE_PAGE_TRACKING is not set" if off else f"{bitmap} does not exist",
                       "boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y", source=str(bitmap))
    if not os.access(bitmap, os.R_OK | os.W_OK):
        return missing(f"no read/write permission on {bitmap}", ROOT_REMEDY, source=str(bitmap))
    return ok(True, source=str(bitmap))


# --- DAMON (read-only) -----------------------------------------------------------------------

DAMON_ADMIN = Path("/sys/kernel/mm/damon/admin")


@dataclass(frozen=True)
class Kdamond:
    index: int
    state: str | None  # None: unreadable
    pid: int | None
    operations: str | None

    def describe(self) -> str:
        pid = "?" if self.pid is None else self.pid
        return f"kdamonds/{self.index} (state {self.state or '?'}, pid {pid})"


def scan_kdamonds(admin: Path = DAMON_ADMIN) -> tuple[int, list[Kdamond]]:
    """nr_kdamonds and every kdamond directory, read now (read-only, never cached)."""
    kdamonds = admin / "kdamonds"
    nr = read_strip(kdamonds / "nr_kdamonds")
    found = []
    dirs = [d for d in kdamonds.iterdir() if d.name.isdigit() and is_dir(d)] if is_dir(kdamonds) else []
    for d in sorted(dirs, key=lambda p: int(p.name)):
        pid = read_strip(d / "pid")
        found.append(Kdamond(int(d.name), read_strip(d / "state"),
                             int(pid) if pid and pid.lstrip("-").isdigit() else None,
                             read_strip(d / "contexts" / "0" / "operations")))
    return (int(nr) if nr and nr.isdigit() else 0), found


def _foreign(kdamond: Kdamond, nr: int) -> bool:
    """Set up (below nr_kdamonds) or not off; an unreadable state counts as foreign (the safe side)."""
    return kdamond.index < nr or kdamond.state != "off"


def foreign_kdamonds(admin: Path = DAMON_ADMIN) -> list[str]:
    """The kdamonds that exist right now, described; read before kvmctl starts one, so none of them is ours."""
    nr, kdamonds = scan_kdamonds(admin)
    found = [k.describe() for k in kdamonds if _foreign(k, nr)]
    if nr > len(found):
        found.append(f"nr_kdamonds is {nr}")
    return found


def probe_damon_sysfs(config: KernelConfig, admin: Path = DAMON_ADMIN) -> Item:
    """DAMON's sysfs: there, and writable by this process (for a kdamond of kvmctl's own)."""
    if not exists(admin):
        why = "CONFIG_DAMON_SYSFS is not set" if config.get("CONFIG_DAMON_SYSFS") == "n" else f"{admin} does not exist"
        return missing(why, "use a kernel with CONFIG_DAMON_SYSFS=y", source=str(admin))
    _, kdamonds = scan_kdamonds(admin)
    listed = {"kdamonds": [{"index": k.index, "state": k.state, "pid": k.pid, "operations": k.operations}
                           for k in kdamonds]}
    if not os.access(admin / "kdamonds" / "nr_kdamonds", os.W_OK):
        return missing("DAMON sysfs is read-only for this process", ROOT_REMEDY, listed, str(admin))
    return ok(listed, source=str(admin))


def probe_foreign_kdamond(admin: Path = DAMON_ADMIN) -> Item:
    """Available when a kdamond that is not ours exists: then kvmctl never writes under DAMON's sysfs."""
    if not exists(admin):
        return missing("no DAMON sysfs, so no kdamond", None, [], str(admin))
    nr, kdamonds = scan_kdamonds(admin)
    foreign = [k for k in kdamonds if _foreign(k, nr)]
    if not foreign:
        return missing("no kdamond is running", None, [], str(admin))
    states = {None: "state unreadable", "on": "running"}
    desc = ", ".join(f"kdamond {k.index} (pid {k.pid or '?'}, {k.operations or '?'}, "
                     f"{states.get(k.state, f'state {k.state}')})" for k in foreign)
    value = [{"index": k.index, "state": k.state, "pid": k.pid, "operations": k.operations} for k in foreign]
    return ok(value, source=str(admin), reason=f"{desc}: not ours, never write under {admin.parent}",
              remedy="treat its aging as background noise; the DAMON ager refuses to run")


KPAGEFLAGS = Path("/proc/kpageflags")
KPF_REFERENCED = 2  # bit of a /proc/kpageflags entry: PG_referenced


def probe_kpageflags(path: Path = KPAGEFLAGS) -> Item:
    """Page flags by PFN; a process's pagemap shows PFNs only to CAP_SYS_ADMIN, so root is needed too."""
    if not exists(path):
        return missing(f"{path} does not exist", "use a kernel with CONFIG_PROC_PAGE_MONITOR=y", source=str(path))
    if not os.access(path, os.R_OK) or os.geteuid() != 0:
        return missing(f"cannot read {path} and pagemap PFNs (needs root)", ROOT_REMEDY, source=str(path))
    return ok(str(path), source=str(path))


def probe_memory(config: KernelConfig) -> MemoryCaps:
    return MemoryCaps(probe_memcg(), probe_swap(), probe_thp(), probe_hugetlb(), probe_mglru(config),
                      probe_page_idle(config), probe_damon_sysfs(config), probe_foreign_kdamond(),
                      probe_kpageflags())
