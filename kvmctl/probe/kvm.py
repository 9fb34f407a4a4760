"""KVM on this host: the vendor module, /dev/kvm, the capabilities kvmctl uses, and the MMU's parameters.

Module parameters are read here and nowhere else: ``kvm.tdp_mmu``,
``kvm_intel.ept``/``eptad``, ``kvm_amd.npt``, ``nested``. A new module
parameter a kernel series adds is detected by adding an item to
:class:`PagingCaps`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import KvmctlError
from kvmctl.probe.item import ROOT_REMEDY, Item, exists, is_dir, missing, ok, read
from kvmctl.probe.kernel import KernelConfig

SYS_MODULE = Path("/sys/module")
VENDOR_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
CPUINFO = Path("/proc/cpuinfo")
DEV_KVM = Path("/dev/kvm")
DEBUGFS_KVM = Path("/sys/kernel/debug/kvm")  # per VM: <pid>-<vm fd>/ with its stats, per vCPU vcpuN/
LOCKLESS_AGING = "CONFIG_KVM_MMU_LOCKLESS_AGING"
LOCKLESS_AGING_SINCE = (6, 15)


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


def kvm_module(sys_module: Path = SYS_MODULE) -> str | None:
    """The vendor module that backs /dev/kvm: kvm_intel, kvm_amd, kvm_pvm."""
    return next((name for name in VENDOR_MODULES if (sys_module / name).exists()), None)


@dataclass(frozen=True)
class KvmCaps:
    module: Item  # kvm_intel / kvm_amd / kvm_pvm
    hw_virt: Item  # vmx / svm CPU flag
    device: Item  # /dev/kvm present and openable
    api_version: Item
    vm_create: Item  # a throwaway VM could be created
    vm_stats: Item  # names of the VM binary stats
    capabilities: dict[str, Item]  # KVM_CAP_* the tool uses -> check_extension value
    debugfs: Item = missing("not probed")  # KVM's debugfs directory (value: its path), read by kvmctl watch


@dataclass(frozen=True)
class PagingCaps:
    tdp_mmu: Item  # value: the parameter as a bool (None when kvm is not loaded)
    ept: Item
    npt: Item
    ad_bits: Item
    nested: Item
    lockless_aging: Item  # CONFIG_KVM_MMU_LOCKLESS_AGING: True/False; "unknown" without a config on >= 6.15
    test_clear_young_nested: Item  # the test_clear_young series' nested mode: "v1" or "fixed"


def _module_item(sys_module: Path) -> Item:
    name = kvm_module(sys_module)
    if name:
        return ok(name, source=str(sys_module / name))
    if exists(sys_module / "kvm"):
        return missing("kvm is loaded but no vendor module (kvm_intel, kvm_amd, kvm_pvm)",
                       "modprobe kvm_intel or kvm_amd (enable VT-x/AMD-V in the firmware)", source=str(sys_module))
    return missing("no KVM module is loaded", "modprobe kvm_intel or kvm_amd", source=str(sys_module))


def _hw_virt(module: str | None) -> Item:
    flags = parse_cpu_flags(read(CPUINFO)[0] or "")
    virt = next((f for f in ("vmx", "svm") if f in flags), None)
    if virt:
        return ok(virt, source=str(CPUINFO))
    note = f"; KVM comes from {module}" if module else ""
    return missing(f"the CPU shows no vmx/svm flag{note}",
                   "run on bare metal or a VM with nested virtualization for EPT/NPT", source=str(CPUINFO))


def _device(module: Item) -> Item:
    if not exists(DEV_KVM):
        return missing(f"{DEV_KVM} does not exist", module.remedy or "load the KVM modules", source=str(DEV_KVM))
    if not os.access(DEV_KVM, os.R_OK | os.W_OK):
        return missing(f"no read/write permission on {DEV_KVM}", "run as root or add your user to the kvm group",
                       source=str(DEV_KVM))
    return ok(str(DEV_KVM), source=str(DEV_KVM))


def _open_kvm(device: Item) -> tuple[Item, Item, Item, dict[str, Item]]:
    """API version, a throwaway VM and its stats names, and the capabilities kvmctl asks about."""
    from kvmctl.kvm import Cap, Kvm

    api = vm_create = vm_stats = missing("not tried: /dev/kvm is not usable", device.remedy)
    caps: dict[str, Item] = {}
    if not device:
        return api, vm_create, vm_stats, caps
    try:
        with Kvm() as kvm:
            api = ok(kvm.api_version, source="KVM_GET_API_VERSION")
            for cap in Cap:
                value = kvm.check_extension(cap)
                caps[cap.name] = (ok(value, source="KVM_CHECK_EXTENSION") if value > 0 else
                                  missing(f"KVM_CAP_{cap.name} is 0 on this kernel", None, value,
                                          "KVM_CHECK_EXTENSION"))
            with kvm.create_vm() as vm:
                vm_create = ok(True, source="KVM_CREATE_VM")
                try:
                    vm_stats = ok([d.name for d in vm.stats().descriptors], source="KVM_GET_STATS_FD")
                except KvmctlError as err:
                    vm_stats = missing(err.message, err.hint or "use a kernel >= 5.14 (KVM_CAP_BINARY_STATS_FD)",
                                       source="KVM_GET_STATS_FD")
    except KvmctlError as err:
        failed = missing(err.message, err.hint)
        api = api if api else failed
        vm_create = failed
        vm_stats = missing("not tried: no VM could be created", err.hint)
    return api, vm_create, vm_stats, caps


def _debugfs(module: Item) -> Item:
    """KVM's debugfs stats of every VM; kvmctl reads only the files without write bits (gauges).

    A counter file (mode 0644) is refused under lockdown, with a line in the
    kernel log for each attempt, so those are never opened.
    """
    if is_dir(DEBUGFS_KVM):
        return ok(str(DEBUGFS_KVM), source=str(DEBUGFS_KVM),
                  reason="only read-only (0444) files are read, which lockdown never refuses")
    if not module:
        return missing("no KVM module is loaded", module.remedy, source=str(DEBUGFS_KVM))
    return missing(f"{DEBUGFS_KVM} is not readable (debugfs not mounted or not root)",
                   f"mount -t debugfs nodev /sys/kernel/debug; {ROOT_REMEDY}", source=str(DEBUGFS_KVM))


def probe_kvm(sys_module: Path = SYS_MODULE) -> KvmCaps:
    module = _module_item(sys_module)
    device = _device(module)
    api, vm_create, vm_stats, caps = _open_kvm(device)
    return KvmCaps(module, _hw_virt(module.value), device, api, vm_create, vm_stats, caps, _debugfs(module))


# --- MMU / paging ----------------------------------------------------------------------------


def _module_param(sys_module: Path, module: str, param: str, loaded: str | None, what: str) -> Item:
    path = sys_module / module / "parameters" / param
    if not exists(sys_module / module):
        return missing(f"{module} is not loaded" + (f" (KVM comes from {loaded})" if loaded else ""),
                       f"needs {what} hardware", source=str(path))
    text, why = read(path)
    if text is None:
        return missing(why or f"{path} is unreadable", None, source=str(path))
    value = parse_module_bool(text)
    if value:
        return ok(True, source=str(path))
    return missing(f"{module}.{param}={text.strip()}", f"load {module} with {param}=1", value, str(path))


def _tdp_mmu(sys_module: Path, module: str | None) -> Item:
    path = sys_module / "kvm/parameters/tdp_mmu"
    text, why = read(path)
    if text is None:
        return missing(why or "no tdp_mmu parameter", "use an x86 kernel >= 5.10 with KVM loaded", source=str(path))
    if parse_module_bool(text):
        return ok(True, source=str(path))
    hint = ("kvm_pvm always uses the shadow MMU" if module == "kvm_pvm"
            else "load kvm with tdp_mmu=Y on an EPT/NPT host")
    return missing(f"kvm.tdp_mmu={text.strip()}", hint, False, str(path))


def _ad_bits(sys_module: Path, module: str | None, npt: Item) -> Item:
    if module == "kvm_intel":
        return _module_param(sys_module, "kvm_intel", "eptad", module, "EPT A/D")
    if module == "kvm_amd":
        return (ok("npt", source=npt.source, reason="NPT always has hardware accessed/dirty bits") if npt
                else missing("NPT is off", npt.remedy, source=npt.source))
    if module:
        return ok("shadow-pte", source=str(sys_module / module),
                  reason="shadow paging: the CPU sets accessed bits in KVM's shadow PTEs")
    return missing("no KVM module is loaded", "load the KVM modules")


def _nested(sys_module: Path, module: str | None) -> Item:
    if module in ("kvm_intel", "kvm_amd"):
        return _module_param(sys_module, module, "nested", module, "nested virtualization")
    return missing(f"{module or 'KVM'} offers no 'nested' parameter: no nested guests here",
                   "nested (rmap fallback after a nested guest) needs kvm_intel or kvm_amd with nested=1",
                   source=str(sys_module / module / "parameters") if module else None)


def _lockless_aging(config: KernelConfig, version: tuple[int, int, int]) -> Item:
    since = ".".join(map(str, LOCKLESS_AGING_SINCE))
    if config.source is None:
        remedy = "enable CONFIG_IKCONFIG_PROC or install /boot/config-$(uname -r)"
        if version < LOCKLESS_AGING_SINCE:  # the option did not exist yet: every aging call takes mmu_lock
            return missing(f"no kernel config to read, but {LOCKLESS_AGING} was added in {since} and this kernel "
                           f"is {version[0]}.{version[1]}: aging takes mmu_lock (unless a vendor backported it)",
                           remedy, False, "kernel version")
        return missing(f"no kernel config to read; kernel {version[0]}.{version[1]} >= {since}, so likely on",
                       remedy, "unknown")
    if config.get(LOCKLESS_AGING) == "y":
        return ok(True, source=config.source, reason="aging walks SPTEs without taking mmu_lock")
    if LOCKLESS_AGING in config.options:
        return missing(f"{LOCKLESS_AGING} is not set: aging takes mmu_lock", f"build the kernel with {LOCKLESS_AGING}=y",
                       False, config.source)
    return missing(f"{LOCKLESS_AGING} is unknown to this kernel (added in {since}): aging takes mmu_lock",
                   f"use a kernel >= {since}", False, config.source)


TEST_CLEAR_YOUNG_NESTED = "test_clear_young_nested"
TEST_CLEAR_YOUNG_NESTED_MODES = ("v1", "fixed")


def test_clear_young_nested_path(sys_module: Path = SYS_MODULE) -> Path:
    return sys_module / "kvm/parameters" / TEST_CLEAR_YOUNG_NESTED


def _test_clear_young_nested(sys_module: Path) -> Item:
    """kvm.test_clear_young_nested: what the lockless hook does for a VM that has shadow roots (nested)."""
    path = test_clear_young_nested_path(sys_module)
    text, why = read(path)
    if text is None:
        return missing("no kvm.test_clear_young_nested parameter: this kernel lacks the test_clear_young series",
                       "build it: scripts/build-lab-kernel.sh --patches kernels/test-clear-young", source=str(path))
    return ok(text.strip(), source=str(path))


def probe_paging(module: str | None, config: KernelConfig, version: tuple[int, int, int],
                 sys_module: Path = SYS_MODULE) -> PagingCaps:
    npt = _module_param(sys_module, "kvm_amd", "npt", module, "AMD-V with NPT")
    return PagingCaps(_tdp_mmu(sys_module, module), _module_param(sys_module, "kvm_intel", "ept", module,
                                                                  "Intel VT-x with EPT"),
                      npt, _ad_bits(sys_module, module, npt), _nested(sys_module, module),
                      _lockless_aging(config, version), _test_clear_young_nested(sys_module))
