"""Memory cgroups for experiments: created below our own memcg, always removed.

kvmctl runs inside a cgroup that belongs to someone else (a login session, a
service, the machine's operators). It therefore creates its experiment cgroups
only *below* its own process's memory cgroup, touches only the knobs of the
cgroups it created, restores every limit it changed and removes the cgroups
again, also on errors and signals (through :mod:`kvmctl.cleanup`).

Both hierarchies are handled: cgroup v1 (``memory`` controller mounted on its
own, knobs ``memory.limit_in_bytes`` / ``memory.usage_in_bytes``) and v2
(unified, ``memory.max`` / ``memory.current`` / ``memory.reclaim``).
"""

from __future__ import annotations

import enum
import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvmctl import cleanup
from kvmctl.errors import PermissionDeniedError, UnsupportedError, UsageError
from kvmctl.knobs import KnobError, read_knob, write_knob
from kvmctl.units import PAGE_SIZE

# v1 reports "no limit" as PAGE_COUNTER_MAX pages (LONG_MAX rounded down to a page).
_V1_UNLIMITED_MIN = 1 << 62
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NAME_PREFIX = "kvmctl-"


class CgroupVersion(enum.IntEnum):
    V1 = 1
    V2 = 2


@dataclass(frozen=True)
class Memcg:
    """A memory cgroup: its directory and its path as the kernel prints it."""

    version: CgroupVersion
    path: Path  # directory in the mounted hierarchy
    rel: str  # "/a/b", relative to the hierarchy root (as in /proc/self/cgroup, debugfs lru_gen)

    def child(self, name: str) -> Memcg:
        return Memcg(self.version, self.path / name, self.rel.rstrip("/") + "/" + name)


# --- discovery (pure parsers, unit-tested) ----------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup -> {controller: path}; the v2 line is keyed ""."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hier, controllers, path = parts
        if not controllers:
            out[""] = path
        for ctl in controllers.split(","):
            if ctl:
                out[ctl] = path
    return out


@dataclass(frozen=True)
class _Mount:
    root: str
    mountpoint: str
    fstype: str
    super_options: frozenset[str]


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def parse_mountinfo(text: str) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        mounts.append(_Mount(_unescape(lf[3]), _unescape(lf[4]), rf[0], frozenset(rf[2].split(","))))
    return mounts


def _join_below_mount(mount: _Mount, cg_path: str) -> Path | None:
    """Directory of cgroup ``cg_path`` within a mount whose root is ``mount.root``."""
    root = mount.root.rstrip("/")
    if root and not (cg_path == root or cg_path.startswith(root + "/")):
        return None
    return Path(mount.mountpoint) / cg_path[len(root):].lstrip("/")


# Where each hierarchy's memory cgroups are: its key in /proc/<pid>/cgroup, its mounts, and what to do without one.
_HIERARCHIES = (
    (CgroupVersion.V1, "memory", lambda m: m.fstype == "cgroup" and "memory" in m.super_options,
     "the cgroup v1 memory controller is not mounted where this process can see it",
     "mount it: mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory"),
    (CgroupVersion.V2, "", lambda m: m.fstype == "cgroup2",
     "cgroup v2 is not mounted where this process can see it", "mount it: mount -t cgroup2 none /sys/fs/cgroup"),
)


def locate_memcg(proc_cgroup: str, mountinfo: str) -> Memcg:
    """Find the memory cgroup described by a /proc/<pid>/cgroup text (v1's memory controller first)."""
    paths = parse_proc_cgroup(proc_cgroup)
    mounts = parse_mountinfo(mountinfo)
    for version, key, is_mount, absent, mount_hint in _HIERARCHIES:
        if key not in paths:
            continue
        rel = paths[key]
        found = (d for m in mounts if is_mount(m) and (d := _join_below_mount(m, rel)) is not None)
        d = next(found, None)
        if d is None:
            raise UnsupportedError(absent, mount_hint)
        return Memcg(version, d, rel)
    raise UnsupportedError("this process is in no memory cgroup", "enable the memory cgroup controller (cgroup_enable=memory)")


def own_memcg(pid: int | str = "self") -> Memcg:
    """The memory cgroup of this process (or ``pid``), checked to exist and be usable."""
    try:
        proc_cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        mountinfo = Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError as err:
        raise UnsupportedError(f"cannot read /proc/{pid}/cgroup: {err.strerror}", "mount procfs on /proc") from err
    memcg = locate_memcg(proc_cgroup, mountinfo)
    if memcg.version is CgroupVersion.V1:
        if not (memcg.path / "memory.limit_in_bytes").exists():
            raise UnsupportedError(f"{memcg.path} has no memory.limit_in_bytes", "mount the cgroup v1 memory controller")
    else:
        controllers = _read_text(memcg.path / "cgroup.controllers", missing_ok=True) or ""
        if "memory" not in controllers.split():
            raise UnsupportedError(
                f"the memory controller is not enabled for cgroup {memcg.rel}",
                "enable it in the parent: echo +memory > <parent>/cgroup.subtree_control",
            )
    return memcg


_CONTROLLER_HINT = "check that the memory cgroup controller is mounted"


def _read_text(path: Path, missing_ok: bool = False) -> str | None:
    return read_knob(path, missing_ok, _CONTROLLER_HINT)


def _write_knob(path: Path, value: str) -> None:
    write_knob(path, value, "see the kernel log (dmesg) for the cgroup's state")


# --- cgroup v2 delegation --------------------------------------------------------------------


def _delegate_memory_v2(parent: Memcg) -> None:
    """Make sure v2 children of ``parent`` get the memory controller.

    v2 lets a cgroup hand controllers to its children only while it has no
    processes of its own, except the root cgroup. So: already delegated -> fine;
    we are in the root cgroup (a lab VM, a container's namespace root) -> enable
    memory there and disable it again on cleanup if no other child cgroup is
    left; anything else -> unsupported, with what to do.
    """
    control = parent.path / "cgroup.subtree_control"
    if "memory" in (_read_text(control, missing_ok=True) or "").split():
        return
    if parent.rel != "/":
        raise UnsupportedError(
            f"cgroup {parent.rel} does not pass the memory controller to child cgroups",
            "run kvmctl in the root cgroup or in a leaf below a cgroup with +memory in cgroup.subtree_control",
        )
    _write_knob(control, "+memory")

    def undo() -> None:
        if not any(p.is_dir() for p in parent.path.iterdir()):
            _write_knob(control, "-memory")

    cleanup.register(f"disable memory in {control}", undo)


# --- the experiment cgroup -------------------------------------------------------------------


@dataclass(frozen=True)
class ReclaimStep:
    """One step of a reclaim: the limit set (v1) or bytes asked (v2) and what followed."""

    value: int
    usage_after: int
    error: str | None = None


@dataclass
class ReclaimResult:
    requested: int
    usage_before: int
    usage_after: int
    steps: list[ReclaimStep] = field(default_factory=list)
    method: str = ""  # "memory.reclaim" or "memory.limit_in_bytes"

    @property
    def reclaimed(self) -> int:
        return max(0, self.usage_before - self.usage_after)


class ExperimentCgroup:
    """A memory cgroup ``kvmctl-<pid>-<tag>`` below our own memcg, removed on cleanup."""

    def __init__(self, memcg: Memcg, parent: Memcg):
        self.memcg = memcg
        self.parent = parent
        self._removed = False
        self._remove_handle: cleanup.Handle | None = None
        self._limit_handle: cleanup.Handle | None = None
        self._original_limit: int | None = None

    # identity

    @property
    def path(self) -> Path:
        return self.memcg.path

    @property
    def name(self) -> str:
        return self.memcg.path.name

    @property
    def rel(self) -> str:
        """Path as the kernel prints it (debugfs lru_gen, /proc/<pid>/cgroup)."""
        return self.memcg.rel

    @property
    def version(self) -> CgroupVersion:
        return self.memcg.version

    def __repr__(self) -> str:
        return f"ExperimentCgroup({self.rel!r}, v{int(self.version)})"

    @classmethod
    def create(cls, tag: str, parent: Memcg | None = None) -> ExperimentCgroup:
        if not _TAG_RE.match(tag):
            raise UsageError(f"cgroup tag {tag!r} is not a plain name", "use letters, digits, '.', '_' or '-' (max 64)")
        parent = parent or own_memcg()
        memcg = parent.child(f"{NAME_PREFIX}{os.getpid()}-{tag}")
        if parent.version is CgroupVersion.V2:
            _delegate_memory_v2(parent)
        try:
            memcg.path.mkdir()
        except FileExistsError:
            raise UsageError(f"cgroup {memcg.rel} already exists", "give each experiment its own tag") from None
        except PermissionError:
            raise PermissionDeniedError(f"cannot create cgroup {memcg.rel}", "run kvmctl as root") from None
        except OSError as err:
            raise UnsupportedError(f"cannot create cgroup {memcg.rel}: {err.strerror}",
                                   "check that this process's memory cgroup accepts children") from None
        cg = cls(memcg, parent)
        cg._remove_handle = cleanup.register(f"remove cgroup {memcg.rel}", cg._remove_now)
        return cg

    # knobs

    def _knob(self, v1: str, v2: str) -> Path:
        return self.path / (v1 if self.version is CgroupVersion.V1 else v2)

    def add_pid(self, pid: int) -> None:
        self._check_alive()
        try:
            _write_knob(self.path / "cgroup.procs", str(pid))
        except KnobError as err:
            if err.errno == errno.ESRCH:
                raise UsageError(f"process {pid} does not exist", "start the process before adding it") from None
            raise

    def pids(self) -> list[int]:
        text = _read_text(self.path / "cgroup.procs", missing_ok=True) or ""
        return [int(x) for x in text.split()]

    def usage_bytes(self) -> int:
        return int((_read_text(self._knob("memory.usage_in_bytes", "memory.current")) or "0").strip())

    def limit_bytes(self) -> int | None:
        """The hard limit in bytes, None when unlimited."""
        text = (_read_text(self._knob("memory.limit_in_bytes", "memory.max")) or "").strip()
        if text == "max":
            return None
        value = int(text)
        return None if self.version is CgroupVersion.V1 and value >= _V1_UNLIMITED_MIN else value

    def set_limit(self, limit: int | None) -> None:
        """Set the hard limit (None = unlimited); the first call remembers the original for restore_limit()."""
        self._check_alive()
        if self._limit_handle is None:
            self._original_limit = self.limit_bytes()
            self._limit_handle = cleanup.register(f"restore limit of cgroup {self.rel}", self._restore_limit_now)
        self._write_limit(limit)

    def _write_limit(self, limit: int | None) -> None:
        if limit is None:
            value = "-1" if self.version is CgroupVersion.V1 else "max"
        else:
            value = str(max(PAGE_SIZE, limit // PAGE_SIZE * PAGE_SIZE))
        _write_knob(self._knob("memory.limit_in_bytes", "memory.max"), value)

    def restore_limit(self) -> None:
        """Put back the limit seen before the first set_limit(); no-op if never changed."""
        if self._limit_handle is not None:
            handle, self._limit_handle = self._limit_handle, None
            handle.release()

    def _restore_limit_now(self) -> None:
        if self.path.exists():
            self._write_limit(self._original_limit)

    def reclaim(self, nbytes: int, steps: int = 8, pause_s: float = 0.0) -> ReclaimResult:
        """Make the kernel reclaim about ``nbytes`` from this cgroup, in ``steps`` steps.

        v2 writes memory.reclaim. v1 has no such knob: it lowers
        memory.limit_in_bytes step by step to usage - nbytes (each write makes
        the kernel reclaim down to it, or fail with EBUSY when it cannot) and
        then restores the original limit, so the cgroup is never left squeezed.
        ``pause_s`` between steps gives a running guest time to touch its hot
        pages again between reclaim's two looks at their accessed state.
        """
        self._check_alive()
        if nbytes <= 0:
            raise UsageError(f"reclaim size must be positive, got {nbytes}", "ask for a positive number of bytes")
        steps = max(1, steps)
        before = self.usage_bytes()
        result = ReclaimResult(requested=nbytes, usage_before=before, usage_after=before)
        if self.version is CgroupVersion.V2:
            result.method = "memory.reclaim"
            chunk = max(PAGE_SIZE, nbytes // steps)
            asked = 0
            while asked < nbytes:
                value = min(chunk, nbytes - asked)
                error = None
                try:
                    _write_knob(self.path / "memory.reclaim", str(value))
                except KnobError as err:
                    error = os.strerror(err.errno)
                asked += value
                result.steps.append(ReclaimStep(value, self.usage_bytes(), error))
                if error:  # EAGAIN: the kernel found nothing more to reclaim
                    break
                if pause_s and asked < nbytes:
                    time.sleep(pause_s)
        else:
            result.method = "memory.limit_in_bytes"
            target = max(PAGE_SIZE, before - nbytes)
            # A limit the caller set on purpose survives the squeeze.
            kept = self._limit_handle is not None
            prior = self.limit_bytes()
            try:
                for i in range(1, steps + 1):
                    limit = before - (before - target) * i // steps
                    error = None
                    try:
                        self.set_limit(limit)
                    except KnobError as err:
                        error = os.strerror(err.errno)  # EBUSY: could not reclaim down to it
                    result.steps.append(ReclaimStep(limit, self.usage_bytes(), error))
                    if error:
                        break
                    if pause_s and i < steps:
                        time.sleep(pause_s)
            finally:
                if kept:
                    self._write_limit(prior)
                else:
                    self.restore_limit()
        result.usage_after = self.usage_bytes()
        return result

    def stat(self) -> dict[str, int]:
        """memory.stat as {key: value}."""
        return parse_memory_stat(_read_text(self.path / "memory.stat") or "")

    # removal

    def _check_alive(self) -> None:
        if self._removed:
            raise UsageError(f"cgroup {self.rel} was already removed", "create a new ExperimentCgroup")

    def remove(self) -> None:
        """Move remaining processes to the parent, rmdir; idempotent."""
        if self._remove_handle is not None:
            handle, self._remove_handle = self._remove_handle, None
            handle.release()

    def _remove_now(self, timeout_s: float = 2.0) -> None:
        # The limit dies with the directory; its restore entry has nothing left to do.
        if self._limit_handle is not None:
            self._limit_handle.discard()
            self._limit_handle = None
        deadline = time.monotonic() + timeout_s
        while True:
            for pid in self.pids():
                try:
                    _write_knob(self.parent.path / "cgroup.procs", str(pid))
                except KnobError as err:
                    if err.errno != errno.ESRCH:  # ESRCH: it exited meanwhile
                        raise
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as err:
                # EBUSY while an exiting task still holds the css; retry briefly.
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise KnobError(f"cannot remove cgroup {self.rel}: {err.strerror}",
                                      f"remove it by hand once its tasks are gone: rmdir {self.path}", err.errno) from None
                time.sleep(0.05)
        self._removed = True

    def __enter__(self) -> ExperimentCgroup:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def parse_memory_stat(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def kvmctl_children(parent: Memcg) -> list[str]:
    """Names of kvmctl-made cgroups directly below ``parent`` (for hygiene checks)."""
    try:
        return sorted(p.name for p in parent.path.iterdir() if p.is_dir() and p.name.startswith(NAME_PREFIX))
    except OSError:
        return []


_NAME_RE = re.compile(rf"^{NAME_PREFIX}(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_cgroups(parent: Memcg) -> list[Memcg]:
    """kvmctl cgroups below ``parent`` whose creating process is gone (killed with SIGKILL, say).

    A reused pid makes its cgroup look alive: the safe side.
    """
    out = []
    for name in kvmctl_children(parent):
        m = _NAME_RE.match(name)
        if m and not _alive(int(m.group(1))):
            out.append(parent.child(name))
    return out


def remove_stale(parent: Memcg) -> tuple[list[str], list[str]]:
    """rmdir the stale kvmctl cgroups that hold no process; returns (removed, kept with reasons)."""
    removed, kept = [], []
    for memcg in stale_cgroups(parent):
        procs = (_read_text(memcg.path / "cgroup.procs", missing_ok=True) or "").split()
        if procs:
            kept.append(f"{memcg.rel}: still holds pids {' '.join(procs)}")
            continue
        try:
            memcg.path.rmdir()
            removed.append(memcg.rel)
        except OSError as err:
            kept.append(f"{memcg.rel}: {err.strerror}")
    return removed, kept
