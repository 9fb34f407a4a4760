"""BPF on this host: the syscall, tracepoint attach, BCC and its kernel headers, BTF, kprobes and fentry.

Files are read first; then, as root, a "return 0" tracepoint program is
loaded and attached with raw syscalls and closed at once (closing the fds
detaches it), and BCC compiles and attaches tiny programs in a child process
bounded in time, so LLVM's memory and any crash stay out of this process.

Kernel headers are found here for the probe and for the tracer alike:
``/lib/modules/<release>/build``, else ``/sys/kernel/kheaders.tar.xz``, else
the newest Debian header pair under ``/usr/src`` (mismatched headers are
enough for tracepoint programs, which read only their own records).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmctl.errors import UnsupportedError
from kvmctl.probe.item import ROOT_REMEDY, SETUP_REMEDY, Item, exists, is_root, missing, ok, read, read_strip
from kvmctl.probe.kernel import KernelConfig
from kvmctl.probe.tracing import KPROBE_PMU, TRACEFS_MOUNT, kprobe_interfaces, tracefs_item

MODULES_DIR = Path("/lib/modules")
SRC_DIR = Path("/usr/src")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
BTF_VMLINUX = Path("/sys/kernel/btf/vmlinux")
# When 1, the kernel accounts each BPF program's run time (shown in /proc/<pid>/fdinfo/<prog fd>).
BPF_STATS_ENABLED = Path("/proc/sys/kernel/bpf_stats_enabled")

BCC_SELFTEST_TIMEOUT_S = 30.0
# Inside `kvmctl lab` the CPU is emulated (~17x slower) and one BCC compile takes minutes, not seconds.
BCC_SELFTEST_TIMEOUT_LAB_S = 240.0

_UTS_RE = re.compile(r'#define\s+UTS_RELEASE\s+"([^"]+)"')
_DEBIAN_ARCH_RE = re.compile(r"^linux-headers-(?P<ver>\d+\.\d+\.\d+-\d+)-(?P<flavour>[a-z0-9]+)$")


@dataclass(frozen=True)
class BpfCaps:
    tracefs: Item
    bpf_syscall: Item
    tracepoint: Item  # a BPF program attaches to a tracepoint (raw syscalls, no BCC)
    bcc: Item
    kernel_headers: Item
    bcc_compile: Item  # BCC compiles and attaches a tracepoint program with those headers
    btf: Item
    lockdown: Item
    kprobe: Item
    fentry: Item


# --- kernel headers --------------------------------------------------------------------------


def parse_utsrelease(text: str) -> str | None:
    """include/generated/utsrelease.h -> the release string the headers were built for."""
    m = _UTS_RE.search(text)
    return m.group(1) if m else None


def headers_release(tree: Path) -> str | None:
    """UTS_RELEASE of a kernel build tree, None if it has none."""
    return parse_utsrelease(read(tree / "include" / "generated" / "utsrelease.h")[0] or "")


@dataclass(frozen=True)
class Headers:
    """Kernel headers BCC will compile against."""

    release: str  # UTS_RELEASE of the headers
    running: str  # uname -r
    build: Path  # arch (build) tree, or the kheaders archive
    source: Path | None  # common tree when split (Debian), else None
    bcc_finds_them: bool  # /lib/modules/<running>/build or kheaders: BCC needs no BCC_KERNEL_SOURCE
    found_at: Path  # where they were found, before resolving links

    @property
    def exact(self) -> bool:
        return self.release == self.running

    def note(self) -> str | None:
        if self.exact:
            return None
        return (f"BCC compiled against mismatched kernel headers {self.release} (running {self.running}): "
                "tracepoint programs only read their own records, which is safe")


def _version_key(ver: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.split(r"[.-]", ver) if x.isdigit())


def debian_header_trees(src_dir: Path = SRC_DIR) -> list[tuple[Path, Path]]:
    """(arch tree, common tree) pairs of installed Debian headers, newest first."""
    pairs = []
    for entry in src_dir.glob("linux-headers-*"):
        m = _DEBIAN_ARCH_RE.match(entry.name)
        if not m or m["flavour"] == "common":
            continue
        common = src_dir / f"linux-headers-{m['ver']}-common"
        if entry.is_dir() and common.is_dir():
            pairs.append((m["ver"], entry, common))
    pairs.sort(key=lambda p: _version_key(p[0]), reverse=True)
    return [(arch, common) for _, arch, common in pairs]


def find_headers(running: str | None = None, modules_dir: Path = MODULES_DIR, src_dir: Path = SRC_DIR,
                 kheaders: Path = KHEADERS) -> Headers:
    """Exact headers (the modules dir, then kheaders), else the newest Debian pair; UnsupportedError if none."""
    running = running or platform.release()
    build = modules_dir / running / "build"
    if build.is_dir():
        source = modules_dir / running / "source"
        return Headers(headers_release(build) or running, running, build.resolve(),
                       source.resolve() if source.is_dir() else None, True, build)
    if exists(kheaders):
        return Headers(running, running, kheaders, None, True, kheaders)
    trees = debian_header_trees(src_dir)
    if not trees:
        raise UnsupportedError(f"no kernel headers for {running} and none installed under {src_dir}",
                               "apt-get install linux-headers-amd64 (or the headers package of your kernel)")
    arch, common = trees[0]
    return Headers(headers_release(arch) or arch.name, running, arch, common, False, arch)


def headers_item(release: str) -> Item:
    try:
        headers = find_headers(release)
    except UnsupportedError as err:
        return missing(f"no kernel headers: {err.message}", SETUP_REMEDY, source=str(MODULES_DIR / release / "build"))
    source = str(headers.found_at)
    value = {"path": str(headers.build), "version": headers.release,
             "match": "exact" if headers.exact else "mismatched"}
    if headers.exact:
        return ok(value, source=source)
    return ok(value, source=source,
              reason=f"headers are {headers.release}, the running kernel is {release}: "
                     "fine for tracepoint programs, wrong for kernel struct layouts",
              remedy=f"install headers for {release} for exact layouts")


# --- raw BPF syscalls ------------------------------------------------------------------------

# Syscall numbers and the tiny program "r0 = 0; exit" as raw bpf_insn bytes.
_SYSCALLS = {"x86_64": {"bpf": 321, "perf_event_open": 298}, "aarch64": {"bpf": 280, "perf_event_open": 241}}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_TRACEPOINT = 5
_RETURN_ZERO = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
_PERF_TYPE_TRACEPOINT = 2
_PERF_SAMPLE_RAW = 1 << 10
_PERF_FLAG_FD_CLOEXEC = 1 << 3


class _BpfProgLoadAttr(ctypes.Structure):
    # The PROG_LOAD head of union bpf_attr; the kernel zero-fills the rest.
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32)]


class _PerfEventAttr(ctypes.Structure):
    # PERF_ATTR_SIZE_VER0 (64 bytes): enough for a tracepoint event.
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64)]


def _errno_reason(what: str, err: int) -> str:
    text = f"{what}: {os.strerror(err)}"
    if err in (1, 13) and not is_root():  # EPERM, EACCES
        text += " (needs root: CAP_BPF and CAP_PERFMON)"
    return text


def _attach_to_tracepoint(prog_fd: int, tracefs: Path, tracepoint: str, perf_event_open: int) -> Item:
    from kvmctl import libc
    from kvmctl.kvm.ioctl import _IOW

    system, event = tracepoint.split(":", 1)
    id_path = tracefs / "events" / system / event / "id"
    pattr = _PerfEventAttr(type=_PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr),
                           config=int(read_strip(id_path) or -1), sample_period=1, sample_type=_PERF_SAMPLE_RAW,
                           wakeup_events=1)
    try:
        perf_fd = libc.syscall(perf_event_open, ctypes.byref(pattr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    except OSError as err:
        return missing(_errno_reason(f"perf_event_open({tracepoint}) failed", err.errno), ROOT_REMEDY,
                       source=str(id_path))
    try:
        libc.ioctl(perf_fd, _IOW(ord("$"), 8, ctypes.c_uint32), prog_fd)  # PERF_EVENT_IOC_SET_BPF
    except OSError as err:
        return missing(_errno_reason("PERF_EVENT_IOC_SET_BPF failed", err.errno),
                       "use a kernel with CONFIG_BPF_EVENTS=y", source=str(id_path))
    finally:
        os.close(perf_fd)
    return ok(tracepoint, source=str(id_path))


def raw_bpf_checks(tracefs: Path | None, tracepoint: str | None) -> tuple[Item, Item]:
    """Load "return 0" as a tracepoint program, attach it through perf, close both fds (which detaches it)."""
    from kvmctl import libc

    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        item = missing(f"no syscall numbers known for {platform.machine()}", "use x86_64 or aarch64")
        return item, item
    insns = ctypes.create_string_buffer(_RETURN_ZERO)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _BpfProgLoadAttr(prog_type=_BPF_PROG_TYPE_TRACEPOINT, insn_cnt=len(_RETURN_ZERO) // 8,
                            insns=ctypes.addressof(insns), license=ctypes.addressof(license_))
    try:
        prog_fd = libc.syscall(numbers["bpf"], _BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    except OSError as err:
        item = missing(_errno_reason("BPF_PROG_LOAD of a tracepoint program failed", err.errno),
                       ROOT_REMEDY if not is_root() else "use a kernel with CONFIG_BPF_SYSCALL=y", source="bpf(2)")
        return item, missing("not tried: the BPF syscall does not work", item.remedy)
    try:
        if tracefs is None or tracepoint is None:
            return ok(True, source="bpf(2)"), missing("no tracefs to find a tracepoint id in", TRACEFS_MOUNT)
        return ok(True, source="bpf(2)"), _attach_to_tracepoint(prog_fd, tracefs, tracepoint,
                                                                numbers["perf_event_open"])
    finally:
        os.close(prog_fd)


# --- BCC -------------------------------------------------------------------------------------


def bcc_module() -> Item:
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return missing("the Python module bcc is not importable",
                       "apt install python3-bpfcc and use a venv made with --system-site-packages")
    location = Path(next(iter(spec.submodule_search_locations)))
    if not exists(location / "libbcc.py"):
        return missing(f"the 'bcc' module at {location} is not BCC (PyPI's 'bcc' is an unrelated package)",
                       "pip uninstall bcc; apt install python3-bpfcc", source=str(location))
    try:
        version = importlib.metadata.version("bcc")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return ok(version, source=str(location))


def pick_error_line(stderr: str, exception: str) -> str:
    """The most telling line of a BCC failure: a headers or clang error, a load failure, else the exception."""
    for pattern in (r"kernel headers", r"error:", r"failed to|not permitted|cannot|unable"):
        for line in stderr.splitlines():
            if re.search(pattern, line, re.I):
                return " ".join(line.split())[:200]
    return " ".join(exception.splitlines()[0].split())[:200] if exception.strip() else "unknown error"


def bcc_child() -> None:
    """Run in a subprocess: BCC compile/attach attempts given as JSON in argv[1], results as JSON on stdout."""
    plan: dict[str, str] = json.loads(sys.argv[1])
    from bcc import BPF

    def attempt(kind: str, target: str) -> dict[str, Any]:
        saved = os.dup(2)
        with tempfile.TemporaryFile() as err:
            os.dup2(err.fileno(), 2)  # libbcc and clang write diagnostics to fd 2
            try:
                if kind == "compile":
                    system, event = target.split(":", 1)
                    BPF(text=f"TRACEPOINT_PROBE({system}, {event}) {{ return 0; }}").cleanup()
                elif kind == "fentry":
                    BPF(text=f"KFUNC_PROBE({target}) {{ return 0; }}").cleanup()
                else:
                    prog = BPF(text="int probe(void *ctx) { return 0; }")
                    prog.attach_kprobe(event=target, fn_name="probe")
                    prog.cleanup()
                return {"ok": True}
            except Exception as exc:  # BCC raises bare Exception for compile and load failures
                err.seek(0)
                return {"ok": False, "error": pick_error_line(err.read().decode(errors="replace"), str(exc))}
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    print(json.dumps({kind: attempt(kind, target) for kind, target in plan.items()}))


def _bcc_timeout() -> float:
    return BCC_SELFTEST_TIMEOUT_LAB_S if os.environ.get("KVMCTL_LAB") else BCC_SELFTEST_TIMEOUT_S


@functools.cache
def _bcc_attempts(plan: tuple[tuple[str, str], ...]) -> dict[str, dict[str, Any]]:
    """Attempts run in a child: bounded in time, and LLVM's memory and any crash stay out of this process."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-c", "from kvmctl.probe.bpf import bcc_child; bcc_child()", json.dumps(dict(plan))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_bcc_timeout(), env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        why = f"BCC self-test did not finish within {_bcc_timeout():.0f} s"
        return {kind: {"ok": False, "error": why} for kind, _ in plan}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        why = pick_error_line(proc.stderr, f"BCC self-test exited with status {proc.returncode}")
        return {kind: {"ok": False, "error": why} for kind, _ in plan}


# --- the BPF area ----------------------------------------------------------------------------


def _btf() -> Item:
    if exists(BTF_VMLINUX):
        return ok(True, source=str(BTF_VMLINUX))
    return missing("no kernel BTF (CONFIG_DEBUG_INFO_BTF off)", "use a kernel with CONFIG_DEBUG_INFO_BTF=y",
                   source=str(BTF_VMLINUX))


def kprobe_support(config: KernelConfig, tracefs: Path | None, lockdown: Item) -> Item:
    """What the kernel's files say about kprobes, before any attach is tried."""
    if config.get("CONFIG_KPROBES") == "n":
        return missing("CONFIG_KPROBES is not set", "use a kernel with CONFIG_KPROBES=y", source=config.source)
    found = kprobe_interfaces(tracefs)
    if not found:
        return missing("no kprobe PMU, no debugfs kprobes and no kprobe_events in tracefs",
                       "use a kernel with CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y", source=str(KPROBE_PMU))
    if lockdown.value == "confidentiality":
        return missing("kernel lockdown=confidentiality forbids kprobes", "boot with lockdown=integrity or none",
                       source=lockdown.source)
    return ok(True, source=str(found[0]))


def _not_tried(blocking: Item) -> Item:
    return missing(f"not tried: {blocking.reason}", blocking.remedy)


def _bcc_plan(items: dict[str, Item], age_fn: str, tp: str) -> tuple[dict[str, str], dict[str, Item]]:
    """Which BCC attempts are worth making, and why not when not."""
    plan: dict[str, str] = {}
    blocked: dict[str, Item] = {}
    first = next((items[k] for k in ("bpf_syscall", "bcc", "tracepoint", "headers") if not items[k]), None)
    if first is items["bpf_syscall"]:
        blocked = dict.fromkeys(("compile", "fentry", "kprobe"), first)
    elif first is not None:  # BCC compiles every program against kernel headers
        blocked = dict.fromkeys(("compile", "fentry", "kprobe"), _not_tried(first))
    else:
        plan["compile"] = tp
    kprobes = items["kprobe_support"]
    if not kprobes:
        blocked["kprobe"] = kprobes
    elif "kprobe" not in blocked:
        plan["kprobe"] = age_fn
    btf, lockdown = items["btf"], items["lockdown"]
    if not btf:
        blocked["fentry"] = missing(f"fentry needs BTF: {btf.reason}", btf.remedy)
    elif lockdown.value == "confidentiality":
        blocked["fentry"] = missing("lockdown=confidentiality forbids fentry/fexit programs",
                                    "boot with lockdown=integrity or none", source=lockdown.source)
    elif "fentry" not in blocked:
        plan["fentry"] = age_fn
    return plan, blocked


def probe_bpf(release: str, tracefs: Path | None, lockdown: Item, kprobes: Item, has_age_gfn: bool,
              has_age_hva: bool, load_bpf: bool) -> BpfCaps:
    """Files first; then (root only) raw loads, then the BCC attempts that the files say can work."""
    # Attach to a KVM aging tracepoint when there is one, else to one every kernel has.
    tp = "kvm:kvm_age_hva" if has_age_hva else "sched:sched_process_exec"
    if load_bpf and is_root():
        bpf_syscall, tracepoint = raw_bpf_checks(tracefs, tp if tracefs else None)
    elif load_bpf:
        bpf_syscall = tracepoint = missing("not tried: loading BPF programs needs root (CAP_BPF, CAP_PERFMON)",
                                           ROOT_REMEDY)
    else:
        bpf_syscall = tracepoint = missing("not tried: probe_host(load_bpf=False)", "run kvmctl info")
    items = {"bpf_syscall": bpf_syscall, "tracepoint": tracepoint, "bcc": bcc_module(),
             "headers": headers_item(release), "btf": _btf(), "lockdown": lockdown, "kprobe_support": kprobes}
    plan, blocked = _bcc_plan(items, "kvm_age_gfn" if has_age_gfn else "vfs_read", tp)
    results = _bcc_attempts(tuple(sorted(plan.items()))) if plan else {}

    def verdict(kind: str, remedy: str) -> Item:
        if kind in blocked:
            return blocked[kind]
        if results[kind]["ok"]:
            return ok(plan[kind], source="BCC self-test")
        error = results[kind]["error"]
        if kind == "fentry":
            remedy = fentry_failure_remedy(plan[kind], error, remedy)
        return missing(f"{kind} attempt on {plan[kind]} failed: {error}", remedy, source="BCC self-test")

    kprobe_remedy, fentry_remedy = refusal_remedies(lockdown)
    return BpfCaps(tracefs_item(tracefs), bpf_syscall, tracepoint, items["bcc"], items["headers"],
                   verdict("compile", SETUP_REMEDY), items["btf"], lockdown,
                   verdict("kprobe", kprobe_remedy), verdict("fentry", fentry_remedy))


def fentry_failure_remedy(symbol: str, error: str, refused: str) -> str:
    """A failed fentry load: ENOENT means there was nothing to attach to, not a refusal."""
    if "No such file or directory" in error:
        return (f"the kernel has no BTF entry for {symbol} to attach fentry to (a module built without BTF, or a "
                "function that cannot be traced); use kprobes or tracepoints instead")
    return refused


def refusal_remedies(lockdown: Item) -> tuple[str, str]:
    """What to check when the kernel refuses a kprobe or fentry program; lockdown only where it is on."""
    if lockdown.value == "none":
        return ("check the kprobe blacklist (/sys/kernel/debug/kprobes/blacklist); lockdown is none",
                "the kernel refuses fentry here, not through lockdown (none): an LSM or missing BPF trampoline "
                "support; use tracepoints instead")
    mode = f"lockdown={lockdown.value}" if lockdown else "lockdown (mode unknown)"
    return (f"check {mode} and the kprobe blacklist",
            f"the kernel refuses fentry here ({mode} or an LSM); use tracepoints instead")

