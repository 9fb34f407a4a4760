"""Host capability probe: what this machine offers for KVM aging work.

:func:`probe_host` returns a :class:`HostCaps` tree. Every leaf is an
:class:`Item`: ``available``, a ``value``, and when missing (or degraded) a
one-line ``reason`` and a ``remedy``, plus the ``source`` it was read from.
Other modules reach kernel features only through these items, so "why is this
missing" always has a one-line answer, and tests skip with it.

The probe only reads, with these exceptions, all but the last leaving the
host as it was: a throwaway VM (closed again); BPF programs that are loaded,
attached and closed at once (closing the fds detaches them), BCC's in a child
process bounded in time; securityfs mounted in a private mount namespace to
read the lockdown mode; and tracefs mounted when absent (left mounted: BCC
needs it, and it changes nothing else). Under ``/sys/kernel/mm/damon`` it
reads the state of kdamonds and never writes.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import gzip
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable

from kvmctl.errors import KvmctlError
from kvmctl.units import format_size, parse_size

# Functions on KVM's aging paths, looked up in /proc/kallsyms.
AGING_SYMBOLS = (
    "kvm_age_gfn",
    "kvm_test_age_gfn",
    "kvm_tdp_mmu_age_gfn_range",
    "kvm_tdp_mmu_test_age_gfn",
    "kvm_rmap_age_gfn_range",
    "kvm_age_rmap",
    "kvm_test_age_rmap",
    "kvm_arch_test_clear_young",
    "kvm_mmu_notifier_clear_flush_young",
    "kvm_mmu_notifier_clear_young",
    "kvm_mmu_notifier_test_young",
)
# Yu Zhao's lockless-aging notifier series names its hooks *test_clear_young*.
TEST_CLEAR_YOUNG = "test_clear_young"

TRACEPOINTS = (
    "kvm:kvm_age_hva",
    "kvm:kvm_test_age_hva",
    "kvm:kvm_unmap_hva_range",
    "kvmmmu:kvm_mmu_set_spte",
    "kvmmmu:kvm_mmu_get_page",
    "kvmmmu:kvm_tdp_mmu_spte_changed",
    "lock:contention_begin",
    "lock:contention_end",
    "kvm:kvm_exit",
    "kvm:kvm_page_fault",
)

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
LOCKLESS_AGING_SINCE = (6, 15)
BCC_SELFTEST_TIMEOUT_S = 30.0
# Inside `kvmctl lab` the CPU is emulated (~17x slower) and one BCC compile
# takes minutes, not seconds.
BCC_SELFTEST_TIMEOUT_LAB_S = 240.0
_ROOT_REMEDY = "run as root (sudo)"
_SETUP_REMEDY = "run scripts/setup.sh as root"


class MmuMode(str, enum.Enum):
    """Which MMU KVM uses for guest memory, hence which aging path runs."""

    TDP = "tdp"  # TDP MMU over EPT/NPT
    SHADOW = "shadow"  # shadow MMU with rmaps (PVM, shadow paging, TDP MMU off)
    NONE = "none"  # no KVM module loaded


@dataclass(frozen=True)
class Item:
    """One capability. Truthy when available, so ``if caps.tdp:`` reads well.

    ``reason``/``remedy`` explain a missing item, or a caveat on an available
    one (e.g. kernel headers that do not match the running kernel).
    """

    available: bool
    value: Any = None
    reason: str | None = None
    remedy: str | None = None
    source: str | None = None

    def __bool__(self) -> bool:
        return self.available

    def to_dict(self) -> dict[str, Any]:
        return {"available": self.available, "value": self.value, "reason": self.reason,
                "remedy": self.remedy, "source": self.source}


def _ok(value: Any = True, source: str | None = None, reason: str | None = None,
        remedy: str | None = None) -> Item:
    return Item(True, value, reason, remedy, source)


def _missing(reason: str, remedy: str | None = None, value: Any = None, source: str | None = None) -> Item:
    return Item(False, value, reason, remedy, source)


# --- pure parsers (unit-tested with fixture text) --------------------------------------------


@dataclass(frozen=True)
class KernelSymbol:
    name: str
    type: str  # nm-style letter: T/t text, W/w weak
    module: str | None  # "[kvm]" suffix, or None for vmlinux


def _lines_containing(text: str, needle: str) -> Iterable[str]:
    """Each line of ``text`` containing ``needle`` (str.find is far faster than splitting 100k lines)."""
    start = 0
    while (i := text.find(needle, start)) >= 0:
        line_start = text.rfind("\n", 0, i) + 1
        line_end = text.find("\n", i)
        line_end = len(text) if line_end < 0 else line_end
        yield text[line_start:line_end]
        start = line_end + 1


def parse_kallsyms(text: str, names: Iterable[str], substring: str | None = None) -> dict[str, KernelSymbol]:
    """Text symbols of /proc/kallsyms named exactly in ``names`` or containing ``substring``."""
    wanted = set(names)
    found: dict[str, KernelSymbol] = {}
    for needle in sorted(wanted) + ([substring] if substring else []):
        for line in _lines_containing(text, needle):
            parts = line.split()
            if len(parts) < 3 or parts[1] not in "tTwW":
                continue
            name = parts[2]
            if name in wanted or (substring and substring in name):
                module = parts[3].strip("[]") if len(parts) > 3 else None
                found.setdefault(name, KernelSymbol(name, parts[1], module))
    return found


def parse_bracketed_choice(text: str) -> str | None:
    """'none [integrity] confidentiality' -> 'integrity' (lockdown, THP modes)."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else None


def parse_kconfig(text: str) -> dict[str, str]:
    """Kernel .config text -> {'CONFIG_X': 'y'|'m'|'n'|value}; 'is not set' becomes 'n'."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            out[m.group(1)] = "n"
        elif m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            out[m.group(1)] = m.group(2).strip('"')
    return out


def parse_kernel_version(release: str) -> tuple[int, int, int]:
    """'6.18.44-fc-v669' -> (6, 18, 44); missing parts are 0."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


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


def parse_utsrelease(text: str) -> str | None:
    """include/generated/utsrelease.h -> the release string the headers were built for."""
    m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def parse_module_bool(text: str) -> bool | None:
    """A bool/int module parameter as sysfs prints it: Y/N, 1/0."""
    value = text.strip()
    if value in ("Y", "y", "1"):
        return True
    if value in ("N", "n", "0"):
        return False
    return None


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    m = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    return set(m.group(1).split()) if m else set()


def pick_error_line(stderr: str, exception: str) -> str:
    """The most telling line of a BCC failure: a headers or clang error, a load failure, else the exception."""
    for pattern in (r"kernel headers", r"error:", r"failed to|not permitted|cannot|unable"):
        for line in stderr.splitlines():
            if re.search(pattern, line, re.I):
                return " ".join(line.split())[:200]
    return " ".join(exception.splitlines()[0].split())[:200] if exception.strip() else "unknown error"


# --- small readers ---------------------------------------------------------------------------


def _bcc_timeout() -> float:
    return BCC_SELFTEST_TIMEOUT_LAB_S if os.environ.get("KVMCTL_LAB") else BCC_SELFTEST_TIMEOUT_S


def _is_root() -> bool:
    return os.geteuid() == 0


def _exists(path: Path) -> bool:
    """Path.exists() that says False instead of raising where a 0700 parent (tracefs, debugfs) hides it."""
    try:
        return path.exists()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _read(path: str | Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, one-line reason it could not be read)."""
    try:
        return Path(path).read_text(), None
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except PermissionError:
        return None, f"cannot read {path}: permission denied" + ("" if _is_root() else " (needs root)")
    except OSError as err:
        return None, f"cannot read {path}: {err.strerror}"


def _read_strip(path: str | Path) -> str | None:
    text, _ = _read(path)
    return text.strip() if text is not None else None


@dataclass(frozen=True)
class KernelConfig:
    options: dict[str, str]
    source: str | None  # None when no config was found

    def get(self, name: str) -> str | None:
        return self.options.get(name)


def _kernel_config(release: str) -> KernelConfig:
    proc = Path("/proc/config.gz")
    try:
        return KernelConfig(parse_kconfig(gzip.decompress(proc.read_bytes()).decode()), str(proc))
    except OSError:
        pass
    boot = Path(f"/boot/config-{release}")
    text, _ = _read(boot)
    if text is not None:
        return KernelConfig(parse_kconfig(text), str(boot))
    return KernelConfig({}, None)


# --- the tree --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelInfo:
    release: str
    version: tuple[int, int, int]
    machine: str
    root: bool
    config_source: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.release, "version": ".".join(map(str, self.version)), "machine": self.machine,
                "root": self.root, "config_source": self.config_source}


@dataclass(frozen=True)
class KvmCaps:
    module: Item  # kvm_intel / kvm_amd / kvm_pvm
    hw_virt: Item  # vmx / svm CPU flag
    device: Item  # /dev/kvm present and openable
    api_version: Item
    vm_create: Item  # a throwaway VM could be created
    vm_stats: Item  # names of the VM binary stats
    capabilities: dict[str, Item]  # KVM_CAP_* the tool uses -> check_extension value


@dataclass(frozen=True)
class PagingCaps:
    tdp_mmu: Item
    ept: Item
    npt: Item
    ad_bits: Item
    nested: Item
    lockless_aging: Item  # CONFIG_KVM_MMU_LOCKLESS_AGING: value True/False, "unknown" without a config


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


@dataclass(frozen=True)
class HostCaps:
    kernel: KernelInfo
    kvm: KvmCaps
    paging: PagingCaps
    memory: MemoryCaps
    bpf: BpfCaps
    symbols: dict[str, Item]  # aging function -> present in /proc/kallsyms
    tracepoints: dict[str, Item]  # "system:event" -> present in tracefs
    notes: tuple[str, ...] = ()  # side effects the probe had (e.g. mounted tracefs)
    probe_seconds: float = 0.0

    # -- verdicts and predicates other modules call --

    @property
    def mmu(self) -> MmuMode:
        if not self.kvm.module:
            return MmuMode.NONE
        if self.paging.tdp_mmu and (self.paging.ept or self.paging.npt):
            return MmuMode.TDP
        return MmuMode.SHADOW

    @property
    def kvm_usable(self) -> Item:
        for item in (self.kvm.device, self.kvm.api_version, self.kvm.vm_create):
            if not item:
                return item
        return self.kvm.vm_create

    @property
    def tdp(self) -> Item:
        mode = self.mmu
        if mode is MmuMode.TDP:
            return _ok("tdp", source=self.paging.tdp_mmu.source)
        if mode is MmuMode.NONE:
            return _missing("no KVM module is loaded", self.kvm.module.remedy)
        if not self.paging.tdp_mmu:
            why = self.paging.tdp_mmu.reason or "the TDP MMU is off"
        else:
            why = "TDP MMU enabled but neither EPT nor NPT is on"
        return _missing(f"shadow MMU (rmap aging path): {why}",
                        "run on a host with EPT/NPT (bare metal, or nested virtualization enabled) and kvm.tdp_mmu=Y")

    @property
    def bpf_tracepoints(self) -> Item:
        for item in (self.bpf.tracepoint, self.bpf.bcc, self.bpf.bcc_compile):
            if not item:
                return item
        return self.bpf.bcc_compile

    @property
    def kprobes(self) -> Item:
        return self.bpf.kprobe

    @property
    def fentry(self) -> Item:
        return self.bpf.fentry

    @property
    def mglru(self) -> Item:
        return self.memory.mglru

    @property
    def page_idle(self) -> Item:
        return self.memory.page_idle

    @property
    def foreign_kdamond(self) -> Item:
        return self.memory.foreign_kdamond

    def hugetlb_pages(self, size: int | str) -> Item:
        """Free hugetlb pages of ``size`` (bytes, or '2M' / '1G')."""
        key = format_size(parse_size(size, "hugetlb page size"))
        item = self.memory.hugetlb.get(key)
        if item is None:
            return _missing(f"this kernel offers no {key} hugetlb pages",
                            f"use one of: {', '.join(self.memory.hugetlb) or 'none (CONFIG_HUGETLBFS off)'}")
        return item

    def tracepoint(self, name: str) -> Item:
        """A tracepoint 'system:event', probed on demand when it is not in TRACEPOINTS."""
        return self.tracepoints.get(name) or _probe_tracepoints((name,), _tracefs_dir())[name]

    # -- presentation --

    def groups(self) -> list[tuple[str, dict[str, Item]]]:
        """(title, {name: item}) per area, dict fields flattened as 'field.key'."""

        def flat(obj) -> dict[str, Item]:
            out: dict[str, Item] = {}
            for f in fields(obj):
                value = getattr(obj, f.name)
                if isinstance(value, Item):
                    out[f.name] = value
                else:
                    out.update({f"{f.name}.{k}": v for k, v in value.items()})
            return out

        return [
            ("KVM", flat(self.kvm)),
            (f"MMU ({self.mmu.value})", flat(self.paging)),
            ("Memory and agers", flat(self.memory)),
            ("BPF", flat(self.bpf)),
            ("Aging symbols (/proc/kallsyms)", dict(self.symbols)),
            ("Tracepoints", dict(self.tracepoints)),
        ]

    def to_dict(self) -> dict[str, Any]:
        def tree(obj) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for f in fields(obj):
                value = getattr(obj, f.name)
                out[f.name] = value.to_dict() if isinstance(value, Item) else {k: v.to_dict() for k, v in value.items()}
            return out

        return {
            "kernel": self.kernel.to_dict(),
            "mmu": self.mmu.value,
            "kvm": tree(self.kvm),
            "paging": tree(self.paging),
            "memory": tree(self.memory),
            "bpf": tree(self.bpf),
            "symbols": {k: v.to_dict() for k, v in self.symbols.items()},
            "tracepoints": {k: v.to_dict() for k, v in self.tracepoints.items()},
            "predicates": {name: getattr(self, name).to_dict() for name in
                           ("kvm_usable", "tdp", "bpf_tracepoints", "kprobes", "fentry", "mglru", "page_idle",
                            "foreign_kdamond")},
            "notes": list(self.notes),
            "probe_seconds": round(self.probe_seconds, 3),
        }


# --- KVM -------------------------------------------------------------------------------------


def _probe_kvm() -> KvmCaps:
    from kvmctl.kvm import Cap, Kvm
    from kvmctl.probe.kvm import kvm_module

    module_name = kvm_module()
    if module_name:
        module = _ok(module_name, source=f"/sys/module/{module_name}")
    elif _exists(Path("/sys/module/kvm")):
        module = _missing("kvm is loaded but no vendor module (kvm_intel, kvm_amd, kvm_pvm)",
                          "modprobe kvm_intel or kvm_amd (enable VT-x/AMD-V in the firmware)", source="/sys/module")
    else:
        module = _missing("no KVM module is loaded", "modprobe kvm_intel or kvm_amd", source="/sys/module")

    flags = parse_cpu_flags(_read("/proc/cpuinfo")[0] or "")
    virt = next((f for f in ("vmx", "svm") if f in flags), None)
    if virt:
        hw_virt = _ok(virt, source="/proc/cpuinfo")
    else:
        note = f"; KVM comes from {module_name}" if module_name else ""
        hw_virt = _missing(f"the CPU shows no vmx/svm flag{note}",
                           "run on bare metal or a VM with nested virtualization for EPT/NPT",
                           source="/proc/cpuinfo")

    dev = Path("/dev/kvm")
    not_tried = "not tried: /dev/kvm is not usable"
    if not _exists(dev):
        device = _missing("/dev/kvm does not exist", module.remedy or "load the KVM modules", source=str(dev))
    elif not os.access(dev, os.R_OK | os.W_OK):
        device = _missing("no read/write permission on /dev/kvm",
                          "run as root or add your user to the kvm group", source=str(dev))
    else:
        device = _ok(str(dev), source=str(dev))
    api = vm_create = vm_stats = _missing(not_tried, device.remedy)
    caps: dict[str, Item] = {}
    if device:
        try:
            with Kvm() as kvm:
                api = _ok(kvm.api_version, source="KVM_GET_API_VERSION")
                for cap in Cap:
                    value = kvm.check_extension(cap)
                    name = f"KVM_CAP_{cap.name}"
                    caps[cap.name] = (_ok(value, source="KVM_CHECK_EXTENSION") if value > 0 else
                                      _missing(f"{name} is 0 on this kernel", None, value, "KVM_CHECK_EXTENSION"))
                with kvm.create_vm() as vm:
                    vm_create = _ok(True, source="KVM_CREATE_VM")
                    try:
                        names = [d.name for d in vm.stats().descriptors]
                        vm_stats = _ok(names, source="KVM_GET_STATS_FD")
                    except KvmctlError as err:
                        vm_stats = _missing(err.message, err.hint or "use a kernel >= 5.14 (KVM_CAP_BINARY_STATS_FD)",
                                            source="KVM_GET_STATS_FD")
        except KvmctlError as err:
            failed = _missing(err.message, err.hint)
            api = api if api else failed
            vm_create = failed
            vm_stats = _missing("not tried: no VM could be created", err.hint)
    return KvmCaps(module, hw_virt, device, api, vm_create, vm_stats, caps)


# --- MMU / paging ----------------------------------------------------------------------------


def _module_param(module: str, param: str, loaded: str | None, what: str) -> Item:
    path = Path(f"/sys/module/{module}/parameters/{param}")
    if not _exists(Path(f"/sys/module/{module}")):
        return _missing(f"{module} is not loaded" + (f" (KVM comes from {loaded})" if loaded else ""),
                        f"needs {what} hardware", source=str(path))
    text, why = _read(path)
    if text is None:
        return _missing(why or f"{path} is unreadable", None, source=str(path))
    value = parse_module_bool(text)
    if value:
        return _ok(True, source=str(path))
    return _missing(f"{module}.{param}={text.strip()}", f"load {module} with {param}=1", value, str(path))


def _probe_paging(module: str | None, config: KernelConfig, version: tuple[int, int, int]) -> PagingCaps:
    tdp_path = Path("/sys/module/kvm/parameters/tdp_mmu")
    text, why = _read(tdp_path)
    if text is None:
        tdp_mmu = _missing(why or "no tdp_mmu parameter", "use an x86 kernel >= 5.10 with KVM loaded",
                           source=str(tdp_path))
    elif parse_module_bool(text):
        tdp_mmu = _ok(True, source=str(tdp_path))
    else:
        hint = ("kvm_pvm always uses the shadow MMU" if module == "kvm_pvm"
                else "load kvm with tdp_mmu=Y on an EPT/NPT host")
        tdp_mmu = _missing(f"kvm.tdp_mmu={text.strip()}", hint, False, str(tdp_path))

    ept = _module_param("kvm_intel", "ept", module, "Intel VT-x with EPT")
    npt = _module_param("kvm_amd", "npt", module, "AMD-V with NPT")

    if module == "kvm_intel":
        ad_bits = _module_param("kvm_intel", "eptad", module, "EPT A/D")
    elif module == "kvm_amd":
        ad_bits = (_ok("npt", source=npt.source, reason="NPT always has hardware accessed/dirty bits") if npt
                   else _missing("NPT is off", npt.remedy, source=npt.source))
    elif module:
        ad_bits = _ok("shadow-pte", source=f"/sys/module/{module}",
                      reason="shadow paging: the CPU sets accessed bits in KVM's shadow PTEs")
    else:
        ad_bits = _missing("no KVM module is loaded", "load the KVM modules")

    if module in ("kvm_intel", "kvm_amd"):
        nested = _module_param(module, "nested", module, "nested virtualization")
    else:
        nested = _missing(f"{module or 'KVM'} offers no 'nested' parameter: no nested guests here",
                          "nested (rmap fallback after a nested guest) needs kvm_intel or kvm_amd with nested=1",
                          source=f"/sys/module/{module}/parameters" if module else None)

    opt = "CONFIG_KVM_MMU_LOCKLESS_AGING"
    since = ".".join(map(str, LOCKLESS_AGING_SINCE))
    if config.source is None:
        guess = "likely on" if version >= LOCKLESS_AGING_SINCE else "likely off"
        lockless = _missing(f"no kernel config to read; kernel {version[0]}.{version[1]} "
                            f"{'>=' if version >= LOCKLESS_AGING_SINCE else '<'} {since}, so {guess}",
                            "enable CONFIG_IKCONFIG_PROC or install /boot/config-$(uname -r)", "unknown")
    elif config.get(opt) == "y":
        lockless = _ok(True, source=config.source, reason="aging walks SPTEs without taking mmu_lock")
    elif opt in config.options:
        lockless = _missing(f"{opt} is not set: aging takes mmu_lock", f"build the kernel with {opt}=y",
                            False, config.source)
    else:
        lockless = _missing(f"{opt} is unknown to this kernel (added in {since}): aging takes mmu_lock",
                            f"use a kernel >= {since}", False, config.source)
    return PagingCaps(tdp_mmu, ept, npt, ad_bits, nested, lockless)


# --- memory and agers ------------------------------------------------------------------------


def _probe_memcg() -> Item:
    from kvmctl.cgroup import own_memcg

    try:
        memcg = own_memcg()
    except KvmctlError as err:
        return _missing(err.message, err.hint, source="/proc/self/cgroup")
    value = {"version": f"v{int(memcg.version)}", "path": str(memcg.path), "rel": memcg.rel,
             "writable": os.access(memcg.path, os.W_OK)}
    if not value["writable"]:
        return _missing(f"cannot create cgroups below {memcg.path}: permission denied",
                        f"{_ROOT_REMEDY}, or delegate that cgroup to your user", value, "/proc/self/cgroup")
    return _ok(value, source="/proc/self/cgroup")


def _probe_hugetlb() -> dict[str, Item]:
    out: dict[str, Item] = {}
    from kvmctl.probe.memory import HUGEPAGES as root

    dirs = sorted(root.glob("hugepages-*kB"), key=lambda p: int(p.name[10:-2])) if _exists(root) else []
    for d in dirs:
        size = int(d.name[10:-2]) * 1024
        key = format_size(size)
        total = int(_read_strip(d / "nr_hugepages") or 0)
        free = int(_read_strip(d / "free_hugepages") or 0)
        value = {"size_bytes": size, "total": total, "free": free}
        if free > 0:
            out[key] = _ok(value, source=str(d))
        else:
            why = "none reserved" if total == 0 else f"all {total} in use"
            out[key] = _missing(f"no free {key} hugetlb pages ({why})",
                                f"reserve some: echo N > {d}/nr_hugepages", value, str(d))
    return out


def _probe_damon(config: KernelConfig) -> tuple[Item, Item]:
    admin = Path("/sys/kernel/mm/damon/admin")
    if not _exists(admin):
        why = ("CONFIG_DAMON_SYSFS is not set" if config.get("CONFIG_DAMON_SYSFS") == "n"
               else f"{admin} does not exist")
        return (_missing(why, "use a kernel with CONFIG_DAMON_SYSFS=y", source=str(admin)),
                _missing("no DAMON sysfs, so no kdamond", None, [], str(admin)))
    # Read-only: state, pid and operations of each kdamond; never write here.
    kdamonds = []
    for d in sorted((admin / "kdamonds").glob("[0-9]*"), key=lambda p: int(p.name)):
        state = _read_strip(d / "state")
        pid = _read_strip(d / "pid")
        ops = _read_strip(d / "contexts" / "0" / "operations")
        kdamonds.append({"index": int(d.name), "state": state, "pid": int(pid) if pid and pid.lstrip("-").isdigit()
                         else None, "operations": ops})
    damon = _ok({"kdamonds": kdamonds}, source=str(admin))
    if not os.access(admin / "kdamonds" / "nr_kdamonds", os.W_OK):
        damon = _missing("DAMON sysfs is read-only for this process", _ROOT_REMEDY, {"kdamonds": kdamonds},
                         str(admin))
    # Probed before kvmctl starts any kdamond, so every running one belongs to someone else;
    # one whose state cannot be read counts as running (the safe side).
    running = [k for k in kdamonds if k["state"] in ("on", None)]
    if running:
        desc = ", ".join(f"kdamond {k['index']} (pid {k['pid'] or '?'}, {k['operations'] or '?'}, "
                         f"{'running' if k['state'] else 'state unreadable'})" for k in running)
        foreign = _ok(running, source=str(admin),
                      reason=f"{desc}: not ours, never write under {admin.parent}",
                      remedy="treat its aging as background noise; the DAMON ager refuses to run")
    else:
        foreign = _missing("no kdamond is running", None, [], str(admin))
    return damon, foreign


def _probe_memory(config: KernelConfig) -> MemoryCaps:
    text, why = _read("/proc/swaps")
    if text is None:
        swap = _missing(why or "/proc/swaps unreadable", None, source="/proc/swaps")
    else:
        areas = parse_swaps(text)
        total = sum(a.size_bytes for a in areas)
        value = {"total_bytes": total, "used_bytes": sum(a.used_bytes for a in areas),
                 "areas": [a.name for a in areas]}
        swap = (_ok(value, source="/proc/swaps") if total else
                _missing("no swap: reclaim never scans anonymous guest memory",
                         "use file-backed guest memory (--backing file) or add swap (swapon)", value, "/proc/swaps"))

    thp_path = "/sys/kernel/mm/transparent_hugepage/enabled"
    text, why = _read(thp_path)
    mode = parse_bracketed_choice(text) if text else None
    if mode is None:
        thp = _missing(why or "unparsable THP mode", "use a kernel with CONFIG_TRANSPARENT_HUGEPAGE=y",
                       source=thp_path)
    elif mode == "never":
        thp = _missing("THP is disabled (never)", f"echo madvise > {thp_path}", mode, thp_path)
    else:
        thp = _ok(mode, source=thp_path)

    lru_path = Path("/sys/kernel/mm/lru_gen/enabled")
    text, why = _read(lru_path)
    if text is None:
        off = config.get("CONFIG_LRU_GEN") == "n"
        mglru = _missing("CONFIG_LRU_GEN is not set" if off else (why or f"{lru_path} unreadable"),
                         "boot a kernel with CONFIG_LRU_GEN=y", source=str(lru_path))
    elif int(text.strip() or "0", 16) == 0:
        mglru = _missing("MGLRU is built in but disabled", f"echo y > {lru_path}", text.strip(), str(lru_path))
    elif not _exists(Path("/sys/kernel/debug/lru_gen")):
        mglru = _missing("MGLRU is on but /sys/kernel/debug/lru_gen is absent (debugfs not mounted or not root)",
                         f"mount -t debugfs nodev /sys/kernel/debug; {_ROOT_REMEDY}", text.strip(), str(lru_path))
    else:
        mglru = _ok(text.strip(), source=str(lru_path))

    idle_path = Path("/sys/kernel/mm/page_idle/bitmap")
    if not _exists(idle_path):
        off = config.get("CONFIG_IDLE_PAGE_TRACKING") == "n"
        page_idle = _missing("CONFIG_IDLE_PAGE_TRACKING is not set" if off else f"{idle_path} does not exist",
                             "boot a kernel with CONFIG_IDLE_PAGE_TRACKING=y", source=str(idle_path))
    elif not os.access(idle_path, os.R_OK | os.W_OK):
        page_idle = _missing(f"no read/write permission on {idle_path}", _ROOT_REMEDY, source=str(idle_path))
    else:
        page_idle = _ok(True, source=str(idle_path))

    damon, foreign = _probe_damon(config)
    return MemoryCaps(_probe_memcg(), swap, thp, _probe_hugetlb(), mglru, page_idle, damon, foreign)


# --- tracefs, symbols, tracepoints -----------------------------------------------------------


def _tracefs_dir() -> Path | None:
    for d in TRACEFS_DIRS:
        if _is_dir(d / "events"):
            return d
    return None


def _mount_tracefs() -> str | None:
    """Mount tracefs when absent (root only); returns a note for the user, or None."""
    target = TRACEFS_DIRS[0]
    if _tracefs_dir() or not _is_root() or not _is_dir(target):
        return None
    from kvmctl import libc

    try:
        libc.mount("nodev", str(target), "tracefs")
    except OSError:
        return None
    return f"mounted tracefs at {target} (left mounted: BCC needs it, nothing else changes)"


def _probe_tracepoints(names: Iterable[str], tracefs: Path | None) -> dict[str, Item]:
    out: dict[str, Item] = {}
    for name in names:
        system, event = name.split(":", 1)
        if tracefs is None:
            readable = any(_exists(d) for d in TRACEFS_DIRS) and not _is_root()
            out[name] = _missing("tracefs is not readable (needs root)" if readable else "tracefs is not mounted",
                                 _ROOT_REMEDY if readable else "mount -t tracefs nodev /sys/kernel/tracing")
            continue
        path = tracefs / "events" / system / event
        if _exists(path / "format"):
            out[name] = _ok(True, source=str(path))
        else:
            out[name] = _missing(f"this kernel has no {system}/{event} tracepoint",
                                 "use a kernel that defines it (see the probe catalogue)", source=str(path))
    return out


# Tracepoints that exist in every kernel but fire only on some MMUs or vendor modules.
_TDP_ONLY_EVENTS = ("kvmmmu:kvm_tdp_mmu_spte_changed",)
_VENDOR_ONLY_EVENTS = ("kvm:kvm_exit", "kvm:kvm_page_fault")  # emitted from vmx/svm code


def _annotate_tracepoints(items: dict[str, Item], module: str | None, tdp_mmu: bool) -> dict[str, Item]:
    out = dict(items)
    for name, item in items.items():
        if item and name in _TDP_ONLY_EVENTS and not tdp_mmu:
            out[name] = replace(item, reason="defined, but fires only when the TDP MMU runs (kvm.tdp_mmu=N here)")
        elif item and name in _VENDOR_ONLY_EVENTS and module not in ("kvm_intel", "kvm_amd"):
            out[name] = replace(item, reason=f"defined, but only kvm_intel/kvm_amd emit it; {module} does not")
    return out


def _probe_symbols() -> dict[str, Item]:
    text, why = _read("/proc/kallsyms")
    if text is None:
        return {name: _missing(why or "/proc/kallsyms unreadable", "mount procfs") for name in AGING_SYMBOLS}
    found = parse_kallsyms(text, AGING_SYMBOLS, TEST_CLEAR_YOUNG)
    out: dict[str, Item] = {}
    for name in AGING_SYMBOLS:
        sym = found.get(name)
        out[name] = (_ok(sym.module or "vmlinux", source="/proc/kallsyms") if sym else
                     _missing("not in /proc/kallsyms (inlined, renamed or absent in this kernel)", None,
                              source="/proc/kallsyms"))
    extra = sorted(n for n in found if n not in out)
    for name in extra:
        out[name] = _ok(found[name].module or "vmlinux", source="/proc/kallsyms")
    if not extra and "kvm_arch_test_clear_young" not in found:
        out[f"*{TEST_CLEAR_YOUNG}*"] = _missing(
            "no *test_clear_young* symbol: this kernel lacks the lockless test_clear_young notifier patches",
            "use a kernel with Yu Zhao's kvm_arch_test_clear_young series to probe it", source="/proc/kallsyms")
    return out


# --- BPF -------------------------------------------------------------------------------------

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
    if err in (1, 13) and not _is_root():  # EPERM, EACCES
        text += " (needs root: CAP_BPF and CAP_PERFMON)"
    return text


def _raw_bpf_checks(tracefs: Path | None, tracepoint: str | None) -> tuple[Item, Item]:
    """Load "return 0" as a tracepoint program, attach it through perf, close both fds (which detaches it)."""
    from kvmctl import libc
    from kvmctl.kvm.ioctl import _IOW

    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        item = _missing(f"no syscall numbers known for {platform.machine()}", "use x86_64 or aarch64")
        return item, item
    insns = ctypes.create_string_buffer(_RETURN_ZERO)
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = _BpfProgLoadAttr(prog_type=_BPF_PROG_TYPE_TRACEPOINT, insn_cnt=len(_RETURN_ZERO) // 8,
                            insns=ctypes.addressof(insns), license=ctypes.addressof(license_))
    try:
        prog_fd = libc.syscall(numbers["bpf"], _BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    except OSError as err:
        item = _missing(_errno_reason("BPF_PROG_LOAD of a tracepoint program failed", err.errno),
                        _ROOT_REMEDY if not _is_root() else "use a kernel with CONFIG_BPF_SYSCALL=y",
                        source="bpf(2)")
        return item, _missing("not tried: the BPF syscall does not work", item.remedy)
    try:
        syscall_item = _ok(True, source="bpf(2)")
        if tracefs is None or tracepoint is None:
            return syscall_item, _missing("no tracefs to find a tracepoint id in",
                                          "mount -t tracefs nodev /sys/kernel/tracing")
        system, event = tracepoint.split(":", 1)
        id_path = tracefs / "events" / system / event / "id"
        tp_id = int(_read_strip(id_path) or -1)
        pattr = _PerfEventAttr(type=_PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr), config=tp_id,
                               sample_period=1, sample_type=_PERF_SAMPLE_RAW, wakeup_events=1)
        try:
            perf_fd = libc.syscall(numbers["perf_event_open"], ctypes.byref(pattr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
        except OSError as err:
            return syscall_item, _missing(_errno_reason(f"perf_event_open({tracepoint}) failed", err.errno),
                                          _ROOT_REMEDY, source=str(id_path))
        try:
            libc.ioctl(perf_fd, _IOW(ord("$"), 8, ctypes.c_uint32), prog_fd)
        except OSError as err:
            return syscall_item, _missing(_errno_reason("PERF_EVENT_IOC_SET_BPF failed", err.errno),
                                          "use a kernel with CONFIG_BPF_EVENTS=y", source=str(id_path))
        finally:
            os.close(perf_fd)
        return syscall_item, _ok(tracepoint, source=str(id_path))
    finally:
        os.close(prog_fd)


def _bcc_module() -> Item:
    spec = importlib.util.find_spec("bcc")
    if spec is None or not spec.submodule_search_locations:
        return _missing("the Python module bcc is not importable",
                        "apt install python3-bpfcc and use a venv made with --system-site-packages")
    location = Path(next(iter(spec.submodule_search_locations)))
    if not _exists(location / "libbcc.py"):
        return _missing(f"the 'bcc' module at {location} is not BCC (PyPI's 'bcc' is an unrelated package)",
                        "pip uninstall bcc; apt install python3-bpfcc", source=str(location))
    try:
        version = importlib.metadata.version("bcc")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return _ok(version, source=str(location))


def _kernel_headers(release: str) -> Item:
    build = Path(f"/lib/modules/{release}/build")
    if _exists(build):
        resolved = build.resolve()
        uts = parse_utsrelease(_read(resolved / "include/generated/utsrelease.h")[0] or "")
        value = {"path": str(resolved), "version": uts, "match": "exact" if uts == release else "mismatched"}
        if uts == release:
            return _ok(value, source=str(build))
        return _ok(value, source=str(build),
                   reason=f"headers are {uts or 'of unknown version'}, the running kernel is {release}: "
                          "fine for tracepoint programs, wrong for kernel struct layouts",
                   remedy=f"install headers for {release} for exact layouts")
    if _exists(Path("/sys/kernel/kheaders.tar.xz")):
        return _ok({"path": "/sys/kernel/kheaders.tar.xz", "version": release, "match": "exact"},
                   source="/sys/kernel/kheaders.tar.xz")
    return _missing(f"no kernel headers: {build} is absent and CONFIG_IKHEADERS is off", _SETUP_REMEDY,
                    source=str(build))


def _bcc_child() -> None:
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


def _run_bcc_child(plan: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Attempts run in a child: bounded in time, and LLVM's memory and any crash stay out of this process."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-c", "from kvmctl.host import _bcc_child; _bcc_child()", json.dumps(plan)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_bcc_timeout(), env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        why = f"BCC self-test did not finish within {_bcc_timeout():.0f} s"
        return {kind: {"ok": False, "error": why} for kind in plan}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        why = pick_error_line(proc.stderr, f"BCC self-test exited with status {proc.returncode}")
        return {kind: {"ok": False, "error": why} for kind in plan}


def _lockdown(config: KernelConfig) -> Item:
    path = Path("/sys/kernel/security/lockdown")
    text, _ = _read(path)
    source = str(path)
    if text is None and _is_root() and shutil.which("unshare"):
        # securityfs is not mounted: mount it in a private mount namespace that dies with the command.
        try:
            proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   f"mount -t securityfs securityfs /sys/kernel/security && cat {path}"],
                                  capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
            text = proc.stdout if proc.returncode == 0 else None
            source = f"{path} (securityfs mounted in a private mount namespace)"
        except (OSError, subprocess.TimeoutExpired):
            text = None
    if text is not None and (mode := parse_bracketed_choice(text)):
        return _ok(mode, source=source)
    forced = next((m for m in ("confidentiality", "integrity", "none")
                   if config.get(f"CONFIG_LOCK_DOWN_KERNEL_FORCE_{m.upper()}") == "y"), None)
    cmdline = re.search(r"\blockdown=(\w+)", _read("/proc/cmdline")[0] or "")
    mode = cmdline.group(1) if cmdline else forced
    if mode:
        return _ok(mode, source="/proc/cmdline" if cmdline else config.source,
                   reason=f"{path} is unreadable; mode inferred from the boot configuration")
    return _missing(f"cannot read {path}", "mount -t securityfs securityfs /sys/kernel/security", "unknown",
                    str(path))


def _probe_bpf(release: str, config: KernelConfig, tracefs: Path | None, symbols: dict[str, Item],
               tracepoints: dict[str, Item], load_bpf: bool) -> BpfCaps:
    """Files first; then (root only) raw loads, then BCC attempts that the files say can work."""
    tracefs_item = (_ok(str(tracefs), source=str(tracefs)) if tracefs else
                    _missing("tracefs is not readable" + ("" if _is_root() else " (needs root)"),
                             "mount -t tracefs nodev /sys/kernel/tracing" if _is_root() else _ROOT_REMEDY))
    # Attach to a KVM aging tracepoint when there is one, else to one every kernel has.
    tp = "kvm:kvm_age_hva" if tracepoints.get("kvm:kvm_age_hva") else "sched:sched_process_exec"
    if load_bpf and _is_root():
        bpf_syscall, tracepoint = _raw_bpf_checks(tracefs, tp if tracefs else None)
    elif load_bpf:
        bpf_syscall = tracepoint = _missing("not tried: loading BPF programs needs root (CAP_BPF, CAP_PERFMON)",
                                            _ROOT_REMEDY)
    else:
        bpf_syscall = tracepoint = _missing("not tried: probe_host(load_bpf=False)", "run kvmctl info")
    bcc = _bcc_module()
    headers = _kernel_headers(release)
    btf_path = Path("/sys/kernel/btf/vmlinux")
    btf = (_ok(True, source=str(btf_path)) if _exists(btf_path) else
           _missing("no kernel BTF (CONFIG_DEBUG_INFO_BTF off)", "use a kernel with CONFIG_DEBUG_INFO_BTF=y",
                    source=str(btf_path)))
    lockdown = _lockdown(config)

    # What BCC attempts are worth making, and why not when not.
    plan: dict[str, str] = {}
    blocked: dict[str, Item] = {}
    if not bpf_syscall:
        blocked["compile"] = blocked["fentry"] = blocked["kprobe"] = bpf_syscall
    elif not bcc:
        blocked["compile"] = blocked["fentry"] = blocked["kprobe"] = _missing(f"not tried: {bcc.reason}", bcc.remedy)
    elif not tracepoint:
        blocked["compile"] = blocked["fentry"] = blocked["kprobe"] = _missing(
            f"not tried: {tracepoint.reason}", tracepoint.remedy)
    elif not headers:  # BCC compiles every program against kernel headers
        blocked["compile"] = blocked["fentry"] = blocked["kprobe"] = _missing(
            f"not tried: {headers.reason}", headers.remedy)
    else:
        plan["compile"] = tp

    kprobe_pmu = Path("/sys/bus/event_source/devices/kprobe")
    if config.get("CONFIG_KPROBES") == "n":
        blocked["kprobe"] = _missing("CONFIG_KPROBES is not set", "use a kernel with CONFIG_KPROBES=y",
                                     source=config.source)
    elif not any(_exists(p) for p in (kprobe_pmu, Path("/sys/kernel/debug/kprobes"),
                                      *([tracefs / "kprobe_events"] if tracefs else []))):
        blocked["kprobe"] = _missing("no kprobe PMU, no debugfs kprobes and no kprobe_events in tracefs",
                                     "use a kernel with CONFIG_KPROBES=y and CONFIG_KPROBE_EVENTS=y",
                                     source=str(kprobe_pmu))
    elif "kprobe" not in blocked:
        plan["kprobe"] = "kvm_age_gfn" if symbols.get("kvm_age_gfn") else "vfs_read"

    if not btf:
        blocked["fentry"] = _missing(f"fentry needs BTF: {btf.reason}", btf.remedy)
    elif lockdown.value == "confidentiality":
        blocked["fentry"] = _missing("lockdown=confidentiality forbids fentry/fexit programs",
                                     "boot with lockdown=integrity or none", source=lockdown.source)
    elif "fentry" not in blocked:
        plan["fentry"] = "kvm_age_gfn" if symbols.get("kvm_age_gfn") else "vfs_read"

    results = _cached_bcc_attempts(tuple(sorted(plan.items()))) if plan else {}

    def verdict(kind: str, ok_value: str, remedy: str) -> Item:
        if kind in blocked:
            return blocked[kind]
        res = results[kind]
        target = plan[kind]
        if res["ok"]:
            return _ok(ok_value.format(target=target), source="BCC self-test")
        return _missing(f"{kind} attempt on {target} failed: {res['error']}", remedy, source="BCC self-test")

    bcc_compile = verdict("compile", "{target}", _SETUP_REMEDY)
    kprobe = verdict("kprobe", "{target}", "check lockdown and kprobe blacklists")
    fentry = verdict("fentry", "{target}",
                     "the kernel refuses fentry here (lockdown or an LSM); use tracepoints instead")
    return BpfCaps(tracefs_item, bpf_syscall, tracepoint, bcc, headers, bcc_compile, btf, lockdown, kprobe, fentry)


@functools.cache
def _cached_bcc_attempts(plan: tuple[tuple[str, str], ...]) -> dict[str, dict[str, Any]]:
    return _run_bcc_child(dict(plan))


# --- entry point -----------------------------------------------------------------------------


@functools.cache
def probe_host(load_bpf: bool = True) -> HostCaps:
    """Probe this host once per process (cached).

    ``load_bpf=False`` skips every BPF load and attach attempt (the items say
    so); useful where only KVM or memory facts matter.
    """
    started = time.monotonic()
    release = platform.release()
    version = parse_kernel_version(release)
    config = _kernel_config(release)
    kernel = KernelInfo(release, version, platform.machine(), _is_root(), config.source)
    notes = [n for n in (_mount_tracefs(),) if n]
    tracefs = _tracefs_dir()
    kvm = _probe_kvm()
    paging = _probe_paging(kvm.module.value, config, version)
    memory = _probe_memory(config)
    symbols = _probe_symbols()
    tracepoints = _annotate_tracepoints(_probe_tracepoints(TRACEPOINTS, tracefs), kvm.module.value,
                                        bool(paging.tdp_mmu))
    bpf = _probe_bpf(release, config, tracefs, symbols, tracepoints, load_bpf)
    if load_bpf and not _is_root():
        notes.append("not root: BPF loads, DAMON and cgroup writes were not tried")
    return HostCaps(kernel, kvm, paging, memory, bpf, symbols, tracepoints, tuple(notes),
                    time.monotonic() - started)
