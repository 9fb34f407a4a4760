"""The watched process as procfs shows it: its KVM descriptors, mappings, memcg. Read-only.

The descriptors are only listed (readlink of /proc/<pid>/fd/N): duplicating
one (pidfd_getfd) would keep the VM alive after its VMM exits, and the copy
cannot read the VM's stats anyway (KVM_GET_STATS_FD checks the mm).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field
from pathlib import Path

from kvmctl.cgroup import Memcg, own_memcg
from kvmctl.errors import KvmctlError, PermissionDeniedError, UsageError
from kvmctl.watch.ranges import Mapping, parse_maps

PROC = Path("/proc")
VM_INODE = "anon_inode:kvm-vm"
_VCPU_RE = re.compile(r"^anon_inode:kvm-vcpu:(\d+)$")


class TargetGone(KvmctlError):
    """The watched process exited."""


@dataclass(frozen=True)
class KvmFds:
    vm: list[int]  # fd numbers of anon_inode:kvm-vm
    vcpus: dict[int, int]  # vCPU index -> fd number


def classify_fds(links: dict[int, str]) -> KvmFds:
    """fd -> readlink target, as /proc/<pid>/fd shows it -> the KVM objects among them."""
    vm = sorted(fd for fd, t in links.items() if t == VM_INODE)
    vcpus = {int(m[1]): fd for fd, t in links.items() if (m := _VCPU_RE.match(t))}
    return KvmFds(vm, dict(sorted(vcpus.items())))


def _fd_links(pid: int) -> dict[int, str]:
    out = {}
    for entry in (PROC / str(pid) / "fd").iterdir():
        try:
            out[int(entry.name)] = str(entry.readlink())
        except OSError:
            pass  # closed meanwhile
    return out


def _gone(pid: int) -> TargetGone:
    return TargetGone(f"process {pid} exited", "the report holds what was measured until then")


def read_proc(pid: int, name: str) -> str:
    """/proc/<pid>/<name> as text; TargetGone when the process is gone, PermissionDeniedError when hidden."""
    try:
        return (PROC / str(pid) / name).read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot read /proc/{pid}/{name}: permission denied",
                                    "run kvmctl watch as root (sudo)") from None
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise _gone(pid) from None
        raise


@dataclass
class Process:
    pid: int
    comm: str
    command: list[str]
    fds: KvmFds = field(default_factory=lambda: KvmFds([], {}))

    def mappings(self) -> list[Mapping]:
        return parse_maps(read_proc(self.pid, "smaps"))

    def alive(self) -> bool:
        try:
            stat = read_proc(self.pid, "stat")
        except TargetGone:
            return False
        return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]  # a zombie holds no memory any more

    def memcg(self) -> Memcg | None:
        try:
            return own_memcg(self.pid)
        except KvmctlError:
            return None


def open_target(pid: int) -> Process:
    """The KVM process ``pid``, or a one-line error saying why it cannot be watched."""
    if pid <= 0:
        raise UsageError(f"--pid {pid} is not a process id", "give the PID of a running VMM")
    try:
        links = _fd_links(pid)
    except (FileNotFoundError, ProcessLookupError):
        raise UsageError(f"process {pid} does not exist", "give the PID of a running VMM (pgrep qemu)") from None
    except PermissionError:
        raise PermissionDeniedError(f"cannot list /proc/{pid}/fd: permission denied",
                                    "run kvmctl watch as root (sudo)") from None
    comm = read_proc(pid, "comm").strip()
    command = [a for a in read_proc(pid, "cmdline").split("\0") if a]
    fds = classify_fds(links)
    if not fds.vm:
        raise UsageError(f"process {pid} ({comm}) is not a KVM process: it holds no {VM_INODE} descriptor",
                         "give the PID of a VMM running a KVM guest (qemu-system-x86_64 -accel kvm, firecracker, "
                         "cloud-hypervisor)")
    return Process(pid, comm, command, fds)


def vm_pids_in_debugfs(debugfs: str | None) -> set[int] | None:
    """The processes with a KVM VM, from the names of KVM's debugfs directories (<pid>-<vm fd>); None if unread."""
    if debugfs is None:
        return None
    try:
        names = [e.name for e in Path(debugfs).iterdir() if e.is_dir()]
    except OSError:
        return None
    return {int(pid) for pid, _, fd in (n.partition("-") for n in names) if pid.isdigit() and fd.isdigit()}


def other_kvm_processes(exclude: int, debugfs: str | None = None) -> list[int]:
    """Every other process holding a VM now: one directory listing from KVM's debugfs, else every /proc/*/fd."""
    pids = vm_pids_in_debugfs(debugfs)
    if pids is not None:
        return sorted(pids - {exclude})
    out = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            fds = classify_fds(_fd_links(int(entry.name)))
        except OSError:
            continue
        if fds.vm:
            out.append(int(entry.name))
    return out


def maps_of(pid: int) -> list[Mapping]:
    """Another process's mappings (maps, not smaps: addresses only, no page-table walk); [] if gone."""
    try:
        return parse_maps(read_proc(pid, "maps"))
    except (TargetGone, PermissionDeniedError):
        return []


def thread_ids(pid: int) -> set[int]:
    try:
        return {int(p.name) for p in (PROC / str(pid) / "task").iterdir()}
    except OSError:
        return set()
