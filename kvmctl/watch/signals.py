"""Passive signals of a watched VM: what the host shows besides the traced events. Read-only.

- KVM's debugfs directory of the VM: only files without write bits (the
  gauges pages_4k/2m/1g, vcpuN/pid). Counter files are 0644 and refused
  under lockdown, each refusal logged in the kernel log: never opened.
- the process's memcg memory.stat (workingset_refault and friends);
- /proc/<pid>/pagemap and /proc/kpageflags: which pages of a range are
  present, and of those which carry PG_referenced (read at the end: the walk
  takes the process's mmap lock for reading).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from kvmctl.cgroup import Memcg, parse_memory_stat
from kvmctl.kvm.memslot import Memslot
from kvmctl.probe.memory import KPF_REFERENCED
from kvmctl.units import PAGE_SHIFT

PM_PRESENT = 1 << 63
PM_PFN_MASK = (1 << 55) - 1
REFAULT_KEYS = ("workingset_refault", "workingset_refault_anon", "workingset_refault_file",
                "total_workingset_refault", "total_workingset_refault_anon", "total_workingset_refault_file")


def vm_debugfs_dir(debugfs: str | None, pid: int, vm_fd: int) -> Path | None:
    """KVM's debugfs directory of the VM behind ``pid``'s descriptor ``vm_fd``, if there is one."""
    if debugfs is None:
        return None
    d = Path(debugfs) / f"{pid}-{vm_fd}"
    return d if d.is_dir() else None


def _read_only_int(path: Path) -> int | None:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o222:
            return None  # a counter file (0644): refused under lockdown, and logged; never opened
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def debugfs_gauges(vm_dir: Path | None) -> dict[str, int]:
    """The VM's read-only stats files (gauges such as pages_4k): name -> value."""
    if vm_dir is None:
        return {}
    out = {}
    try:
        entries = sorted(vm_dir.iterdir())
    except OSError:
        return {}
    for entry in entries:
        if (value := _read_only_int(entry)) is not None:
            out[entry.name] = value
    return out


def debugfs_vcpu_tids(vm_dir: Path | None) -> dict[int, int]:
    """vCPU index -> thread id from the read-only vcpuN/pid files (0 until the vCPU first ran: left out)."""
    out: dict[int, int] = {}
    if vm_dir is None:
        return out
    for d in vm_dir.glob("vcpu[0-9]*"):
        tid = _read_only_int(d / "pid")
        if tid:
            out[int(d.name[4:])] = tid
    return out


def memcg_stat(memcg: Memcg | None) -> dict[str, int]:
    if memcg is None:
        return {}
    try:
        return parse_memory_stat((memcg.path / "memory.stat").read_text())
    except OSError:
        return {}


def refaults(stats: dict[str, int]) -> int | None:
    """The memcg's refault counter: v2 splits anon and file, v1 may show one total."""
    for keys in (("workingset_refault_anon", "workingset_refault_file"), ("workingset_refault",),
                 ("total_workingset_refault_anon", "total_workingset_refault_file"), ("total_workingset_refault",)):
        if all(k in stats for k in keys):
            return sum(stats[k] for k in keys)
    return None


def stat_deltas(first: dict[str, int], last: dict[str, int]) -> dict[str, int]:
    """Counters that changed between two memory.stat readings (gauges too: end minus start)."""
    return {k: last[k] - first[k] for k in sorted(last) if k in first and last[k] != first[k]}


def pagemap_entries(pid: int, memslot: Memslot) -> np.ndarray:
    """The raw pagemap words of the range's pages (PFNs need CAP_SYS_ADMIN)."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        want = memslot.pages * 8
        buf = bytearray()
        offset = (memslot.hva_start >> PAGE_SHIFT) * 8
        while len(buf) < want:
            chunk = os.pread(fd, min(want - len(buf), 8 << 20), offset + len(buf))
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(fd)
    return np.frombuffer(bytes(buf), dtype="<u8")


def kpageflags_of(pfns: np.ndarray, kpageflags: str) -> np.ndarray:
    """Flags words of ``pfns``, read in runs of consecutive PFNs."""
    out = np.zeros(len(pfns), dtype=np.uint64)
    if not len(pfns):
        return out
    order = np.argsort(pfns, kind="stable")
    sorted_pfns = pfns[order]
    breaks = np.flatnonzero(np.diff(sorted_pfns) != 1) + 1
    fd = os.open(kpageflags, os.O_RDONLY)
    try:
        flags = np.zeros(len(pfns), dtype=np.uint64)
        for run in np.split(np.arange(len(sorted_pfns)), breaks):
            first = int(sorted_pfns[run[0]])
            n = int(sorted_pfns[run[-1]]) - first + 1
            data = os.pread(fd, n * 8, first * 8)
            words = np.frombuffer(data, dtype="<u8")
            flags[run] = words[sorted_pfns[run] - first] if len(words) == n else 0
    finally:
        os.close(fd)
    out[order] = flags
    return out


def page_heat(pid: int, memslot: Memslot, kpageflags: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(present, referenced) per page of the range; referenced is None without kpageflags."""
    words = pagemap_entries(pid, memslot)
    present = (words & np.uint64(PM_PRESENT)) != 0
    if kpageflags is None:
        return present, None
    pfns = words[present] & np.uint64(PM_PFN_MASK)
    if len(pfns) and not pfns.any():  # PFNs hidden: no CAP_SYS_ADMIN
        return present, None
    referenced = np.zeros(len(words), dtype=bool)
    referenced[present] = (kpageflags_of(pfns, kpageflags) >> np.uint64(KPF_REFERENCED)) & np.uint64(1) != 0
    return present, referenced
