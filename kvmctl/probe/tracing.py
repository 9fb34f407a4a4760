"""What the kernel offers for tracing: tracefs, tracepoints and their fields, kernel symbols, kprobes.

A new tracepoint or kernel function a patch series adds is detected here:
:meth:`HostCaps.tracepoint_fields` and :meth:`KernelSymbols.matching` answer
for any name, and the trace catalogue asks them about every attach point it
declares. ``TRACEPOINTS`` and ``AGING_SYMBOLS`` are only what ``kvmctl info``
lists.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kvmctl.errors import UnsupportedError
from kvmctl.probe.item import ROOT_REMEDY, Item, exists, is_dir, is_root, missing, ok, read

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEFS_MOUNT = "mount -t tracefs nodev /sys/kernel/tracing"
KALLSYMS = Path("/proc/kallsyms")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
DEBUGFS_KPROBES = Path("/sys/kernel/debug/kprobes")

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
    "kvm:kvm_age_notifier",  # the test_clear_young series (kernels/test-clear-young)
)
# Tracepoints that exist in every kernel but fire only on some MMUs or vendor modules.
_TDP_ONLY_EVENTS = ("kvmmmu:kvm_tdp_mmu_spte_changed",)
_VENDOR_ONLY_EVENTS = ("kvm:kvm_exit", "kvm:kvm_page_fault")  # emitted from vmx/svm code

# Functions on KVM's aging paths that `kvmctl info` lists.
AGING_SYMBOLS = (
    "kvm_age_gfn",
    "kvm_test_age_gfn",
    "kvm_tdp_mmu_age_gfn_range",
    "kvm_tdp_mmu_test_age_gfn",
    "kvm_rmap_age_gfn_range",
    "kvm_age_rmap",
    "kvm_test_age_rmap",
    "kvm_arch_test_clear_young",
    "kvm_mmu_notifier_test_clear_young",
    "kvm_mmu_notifier_clear_flush_young",
    "kvm_mmu_notifier_clear_young",
    "kvm_mmu_notifier_test_young",
)
# Yu Zhao's lockless-aging notifier series names its hooks *test_clear_young*.
TEST_CLEAR_YOUNG = "test_clear_young"

_FIELD_RE = re.compile(r"field:.*?\s\**(\w+)(\[.*\])?;\s*offset:")
_CLONE_SUFFIX_RE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)(\.(isra|constprop|part|cold|llvm)\.?\d*)*$")


# --- tracefs ---------------------------------------------------------------------------------


def tracefs_dir() -> Path | None:
    """The mounted tracefs, None when there is none (or it is not readable)."""
    return next((d for d in TRACEFS_DIRS if is_dir(d / "events")), None)


def tracefs_missing() -> UnsupportedError:
    return UnsupportedError("tracefs is not mounted", f"mount it: {TRACEFS_MOUNT}")


def require_tracefs() -> Path:
    """The mounted tracefs, or UnsupportedError with the mount command."""
    found = tracefs_dir()
    if found is None:
        raise tracefs_missing()
    return found


def mount_tracefs() -> str | None:
    """Mount tracefs when absent (root only); returns a note for the user, or None."""
    from kvmctl import libc

    target = TRACEFS_DIRS[0]
    if tracefs_dir() or not is_root() or not is_dir(target):
        return None
    try:
        libc.mount("nodev", str(target), "tracefs")
    except OSError:
        return None
    return f"mounted tracefs at {target} (left mounted: BCC needs it, nothing else changes)"


def tracefs_item(tracefs: Path | None) -> Item:
    if tracefs:
        return ok(str(tracefs), source=str(tracefs))
    return missing("tracefs is not readable" + ("" if is_root() else " (needs root)"),
                   TRACEFS_MOUNT if is_root() else ROOT_REMEDY)


# --- tracepoints -----------------------------------------------------------------------------


def parse_format_fields(text: str) -> frozenset[str]:
    """Field names of a tracefs ``format`` file, common_* fields excluded."""
    names = set()
    for line in text.splitlines():
        m = _FIELD_RE.search(line)
        if m and not m.group(1).startswith("common_"):
            names.add(m.group(1))
    return frozenset(names)


@functools.cache
def tracepoint_fields(name: str, tracefs: Path | None) -> frozenset[str] | None:
    """Record fields of tracepoint 'system:event', None when this kernel has no such tracepoint."""
    if tracefs is None:
        return None
    system, event = name.split(":", 1)
    text, _ = read(tracefs / "events" / system / event / "format")
    return None if text is None else parse_format_fields(text)


def probe_tracepoints(names: Iterable[str], tracefs: Path | None) -> dict[str, Item]:
    out: dict[str, Item] = {}
    for name in names:
        system, event = name.split(":", 1)
        if tracefs is None:
            readable = any(exists(d) for d in TRACEFS_DIRS) and not is_root()
            out[name] = missing("tracefs is not readable (needs root)" if readable else "tracefs is not mounted",
                                ROOT_REMEDY if readable else TRACEFS_MOUNT)
            continue
        path = tracefs / "events" / system / event
        if tracepoint_fields(name, tracefs) is not None:
            out[name] = ok(True, source=str(path))
        else:
            out[name] = missing(f"this kernel has no {system}/{event} tracepoint",
                                "use a kernel that defines it (see the probe catalogue)", source=str(path))
    return out


def annotate_tracepoints(items: dict[str, Item], module: str | None, tdp_mmu: bool) -> dict[str, Item]:
    """Say which defined tracepoints cannot fire on this host's MMU or vendor module."""
    out = dict(items)
    for name, item in items.items():
        if item and name in _TDP_ONLY_EVENTS and not tdp_mmu:
            out[name] = replace(item, reason="defined, but fires only when the TDP MMU runs (kvm.tdp_mmu=N here)")
        elif item and name in _VENDOR_ONLY_EVENTS and module not in ("kvm_intel", "kvm_amd"):
            out[name] = replace(item, reason=f"defined, but only kvm_intel/kvm_amd emit it; {module} does not")
    return out


# --- kernel symbols --------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSymbol:
    name: str
    type: str  # nm-style letter: T/t text, W/w weak
    module: str | None  # "[kvm]" suffix, or None for vmlinux


def symbol_base(name: str) -> str | None:
    """A function's name without compiler clone suffixes ('kvm_age_rmap.isra.0' -> 'kvm_age_rmap')."""
    m = _CLONE_SUFFIX_RE.match(name)
    return m["base"] if m else None


def _lines_containing(text: str, needle: str) -> Iterable[str]:
    """Each line of ``text`` containing ``needle`` (str.find is far faster than splitting 100k lines)."""
    start = 0
    while (i := text.find(needle, start)) >= 0:
        line_start = text.rfind("\n", 0, i) + 1
        line_end = text.find("\n", i)
        line_end = len(text) if line_end < 0 else line_end
        yield text[line_start:line_end]
        start = line_end + 1


def _text_symbols(text: str, needle: str) -> Iterable[KernelSymbol]:
    for line in _lines_containing(text, needle):
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "tTwW":
            yield KernelSymbol(parts[2], parts[1], parts[3].strip("[]") if len(parts) > 3 else None)


def parse_kallsyms(text: str, names: Iterable[str], substring: str | None = None) -> dict[str, KernelSymbol]:
    """Text symbols of /proc/kallsyms named exactly in ``names`` or containing ``substring``."""
    wanted = set(names)
    found: dict[str, KernelSymbol] = {}
    for needle in sorted(wanted) + ([substring] if substring else []):
        for sym in _text_symbols(text, needle):
            if sym.name in wanted or (substring and substring in sym.name):
                found.setdefault(sym.name, sym)
    return found


@dataclass(frozen=True)
class KernelSymbols:
    """The text of /proc/kallsyms, read once, answering for any function name."""

    text: str | None
    error: str | None = None  # why it could not be read

    def find(self, names: Iterable[str], substring: str | None = None) -> dict[str, KernelSymbol]:
        return parse_kallsyms(self.text or "", names, substring)

    def matching(self, bases: Iterable[str]) -> set[str]:
        """Names of text symbols whose base name is in ``bases``, compiler clones included."""
        out: set[str] = set()
        for base in set(bases):
            out.update(s.name for s in _text_symbols(self.text or "", base) if symbol_base(s.name) == base)
        return out


def read_kernel_symbols(path: Path = KALLSYMS) -> KernelSymbols:
    text, why = read(path)
    return KernelSymbols(text, None if text is not None else (why or f"{path} unreadable"))


def probe_symbols(symbols: KernelSymbols) -> dict[str, Item]:
    """The aging functions `kvmctl info` lists, and any test_clear_young hook of a patched kernel."""
    if symbols.text is None:
        return {name: missing(symbols.error or f"{KALLSYMS} unreadable", "mount procfs") for name in AGING_SYMBOLS}
    found = symbols.find(AGING_SYMBOLS, TEST_CLEAR_YOUNG)
    out: dict[str, Item] = {}
    for name in AGING_SYMBOLS:
        sym = found.get(name)
        out[name] = (ok(sym.module or "vmlinux", source=str(KALLSYMS)) if sym else
                     missing(f"not in {KALLSYMS} (inlined, renamed or absent in this kernel)", None,
                             source=str(KALLSYMS)))
    extra = sorted(n for n in found if n not in out)
    for name in extra:
        out[name] = ok(found[name].module or "vmlinux", source=str(KALLSYMS))
    if not extra and "kvm_arch_test_clear_young" not in found:
        out[f"*{TEST_CLEAR_YOUNG}*"] = missing(
            "no *test_clear_young* symbol: this kernel lacks the lockless test_clear_young notifier patches",
            "use a kernel with Yu Zhao's kvm_arch_test_clear_young series to probe it", source=str(KALLSYMS))
    return out


# --- kprobes ---------------------------------------------------------------------------------


def kprobe_interfaces(tracefs: Path | None) -> list[Path]:
    """Where this kernel offers kprobes: the kprobe PMU, debugfs, tracefs kprobe_events."""
    candidates = [KPROBE_PMU, DEBUGFS_KPROBES, *([tracefs / "kprobe_events"] if tracefs else [])]
    return [p for p in candidates if exists(p)]
