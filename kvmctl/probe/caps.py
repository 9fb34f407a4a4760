"""The :class:`HostCaps` tree: every area's items, the verdicts other modules call, and its two shapes.

Verdicts (``mmu``, ``tdp``, ``bpf_tracepoints``, ...) combine items so that
``kvmctl info``, the test markers, the agers and the tracer ask the same
question the same way. ``groups()`` is the table ``kvmctl info`` prints,
``to_dict()`` its JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kvmctl.probe.bpf import BpfCaps
from kvmctl.probe.item import Item, first_missing, missing, ok
from kvmctl.probe.kernel import KernelInfo
from kvmctl.probe.kvm import KvmCaps, PagingCaps
from kvmctl.probe.memory import LRU_GEN_SECONDARY_YOUNG, MemoryCaps, parse_lru_gen_features
from kvmctl.probe.tracing import KALLSYMS, KernelSymbols, tracepoint_fields
from kvmctl.units import format_size, parse_size


class MmuMode(str, enum.Enum):
    """Which MMU KVM uses for guest memory, hence which aging path runs."""

    TDP = "tdp"  # TDP MMU over EPT/NPT
    SHADOW = "shadow"  # shadow MMU with rmaps (PVM, shadow paging, TDP MMU off)
    NONE = "none"  # no KVM module loaded


def _items(obj) -> dict[str, Item]:
    """An area's items, dict fields flattened as 'field.key'."""
    out: dict[str, Item] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Item):
            out[f.name] = value
        else:
            out.update({f"{f.name}.{k}": v for k, v in value.items()})
    return out


def _tree(obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = value.to_dict() if isinstance(value, Item) else {k: v.to_dict() for k, v in value.items()}
    return out


class _Alias:
    """A read-only attribute that is one area's item."""

    def __init__(self, area: str, item: str):
        self.area, self.item = area, item

    def __get__(self, caps, owner=None) -> Item:
        return getattr(getattr(caps, self.area), self.item)


@dataclass(frozen=True)
class HostCaps:
    kernel: KernelInfo
    kvm: KvmCaps
    paging: PagingCaps
    memory: MemoryCaps
    bpf: BpfCaps
    symbols: dict[str, Item]  # aging function -> present among the kernel's symbols
    tracepoints: dict[str, Item]  # "system:event" -> present in tracefs
    notes: tuple[str, ...] = ()  # side effects the probe had (e.g. mounted tracefs)
    probe_seconds: float = 0.0
    tracefs: Path | None = None  # the mounted tracefs
    kernel_symbols: KernelSymbols = KernelSymbols(None, "not read")
    kprobe_support: Item = missing("not read")  # what the kernel's files say, before an attach is tried

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
        return first_missing(self.kvm.device, self.kvm.api_version, self.kvm.vm_create)

    @property
    def tdp(self) -> Item:
        mode = self.mmu
        if mode is MmuMode.TDP:
            return ok("tdp", source=self.paging.tdp_mmu.source)
        if mode is MmuMode.NONE:
            return missing("no KVM module is loaded", self.kvm.module.remedy)
        if not self.paging.tdp_mmu:
            why = self.paging.tdp_mmu.reason or "the TDP MMU is off"
        else:
            why = "TDP MMU enabled but neither EPT nor NPT is on"
        return missing(f"shadow MMU (rmap aging path): {why}",
                       "run on a host with EPT/NPT (bare metal, or nested virtualization enabled) and kvm.tdp_mmu=Y")

    @property
    def test_clear_young(self) -> Item:
        """The lockless accessed-bit harvest hook (kernels/test-clear-young): symbol, tracepoint, switches."""
        hook = self.symbols.get("kvm_arch_test_clear_young")
        tracepoint = self.tracepoints.get("kvm:kvm_age_notifier") or missing("not probed")
        if not hook and not tracepoint:
            return missing("this kernel lacks the test_clear_young series (no kvm_arch_test_clear_young, "
                           "no kvm:kvm_age_notifier)",
                           "build one: scripts/build-lab-kernel.sh --patches kernels/test-clear-young, then "
                           "kvmctl lab --kernel <tree>", source=hook.source if hook else None)
        mglru = self.memory.mglru
        cap = (("on" if parse_lru_gen_features(mglru.value) & LRU_GEN_SECONDARY_YOUNG else "off")
               if isinstance(mglru.value, str) else None)
        value = {"symbol": "kvm_arch_test_clear_young" if hook else None, "tracepoint": bool(tracepoint),
                 "lru_gen_cap": cap, "lru_gen_cap_bit": f"{LRU_GEN_SECONDARY_YOUNG:#06x}",
                 "nested_mode": self.paging.test_clear_young_nested.value}
        reason = None if tracepoint else "no kvm:kvm_age_notifier tracepoint: calls per path are not observable"
        return ok(value, source=hook.source if hook else tracepoint.source, reason=reason)

    @property
    def bpf_tracepoints(self) -> Item:
        return first_missing(self.bpf.tracepoint, self.bpf.bcc, self.bpf.bcc_compile)

    # Items other modules ask for by a short name.
    kprobes = _Alias("bpf", "kprobe")
    fentry = _Alias("bpf", "fentry")
    mglru = _Alias("memory", "mglru")
    page_idle = _Alias("memory", "page_idle")
    foreign_kdamond = _Alias("memory", "foreign_kdamond")

    @property
    def kprobe_verdict(self) -> Item:
        """Whether kprobes attach: the attach attempt where one was made, else what the files say."""
        return self.bpf.kprobe if self.bpf.kprobe.source == "BCC self-test" else self.kprobe_support

    def hugetlb_pages(self, size: int | str) -> Item:
        """Free hugetlb pages of ``size`` (bytes, or '2M' / '1G')."""
        key = format_size(parse_size(size, "hugetlb page size"))
        item = self.memory.hugetlb.get(key)
        if item is None:
            return missing(f"this kernel offers no {key} hugetlb pages",
                           f"use one of: {', '.join(self.memory.hugetlb) or 'none (CONFIG_HUGETLBFS off)'}")
        return item

    def tracepoint_fields(self, name: str) -> frozenset[str] | None:
        """The record fields of a tracepoint, None when this kernel has none by that name."""
        return tracepoint_fields(name, self.tracefs)

    # -- the two shapes of `kvmctl info` --

    def groups(self) -> list[tuple[str, dict[str, Item]]]:
        """(title, {name: item}) per area, dict fields flattened as 'field.key'."""
        return [
            ("KVM", _items(self.kvm)),
            (f"MMU ({self.mmu.value})", _items(self.paging)),
            ("Memory and agers", _items(self.memory)),
            ("BPF", _items(self.bpf)),
            (f"Aging symbols ({KALLSYMS})", dict(self.symbols)),
            ("Tracepoints", dict(self.tracepoints)),
            ("Aging patches", {"test_clear_young": self.test_clear_young}),
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel.to_dict(),
            "mmu": self.mmu.value,
            "kvm": _tree(self.kvm),
            "paging": _tree(self.paging),
            "memory": _tree(self.memory),
            "bpf": _tree(self.bpf),
            "symbols": {k: v.to_dict() for k, v in self.symbols.items()},
            "tracepoints": {k: v.to_dict() for k, v in self.tracepoints.items()},
            "predicates": {name: getattr(self, name).to_dict() for name in
                           ("kvm_usable", "tdp", "bpf_tracepoints", "kprobes", "fentry", "mglru", "page_idle",
                            "foreign_kdamond", "test_clear_young")},
            "notes": list(self.notes),
            "probe_seconds": round(self.probe_seconds, 3),
        }
