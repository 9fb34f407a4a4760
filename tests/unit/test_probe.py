"""Pure parts of the host probe: parsers, verdicts and predicates, on fixture text."""

from __future__ import annotations

import json

import pytest

from kvmctl.errors import UsageError
from kvmctl.probe import HostCaps, Item, MmuMode
from kvmctl.probe.bpf import BpfCaps, fentry_failure_remedy, parse_utsrelease, pick_error_line, refusal_remedies
from kvmctl.probe.item import missing, ok
from kvmctl.probe.kernel import KernelConfig, KernelInfo, parse_bracketed_choice, parse_kconfig, parse_kernel_version
from kvmctl.probe.kvm import KvmCaps, PagingCaps, parse_cpu_flags, parse_module_bool
from kvmctl.probe.memory import MemoryCaps, parse_swaps
from kvmctl.probe.tracing import annotate_tracepoints, parse_kallsyms

KALLSYMS = """\
ffffffff8127c260 t kvm_mmu_notifier_test_young
ffffffff8127c480 t kvm_mmu_notifier_clear_flush_young
ffffffff8127c6b0 t kvm_mmu_notifier_clear_young
ffffffff812db8e0 T kvm_age_gfn
ffffffff812db970 T kvm_test_age_gfn
ffffffff812dba00 T kvm_age_gfn_range_helper
ffffffff82a00000 d kvm_age_gfn_data
ffffffff812ea9d0 T kvm_tdp_mmu_age_gfn_range
ffffffffc0a01230 t kvm_arch_test_clear_young\t[kvm]
ffffffffc0a01300 t kvm_tdp_mmu_test_clear_young\t[kvm]
0000000000000000 T __pfx_kvm_test_age_gfn"""


def test_kallsyms_exact_names_only():
    found = parse_kallsyms(KALLSYMS, ["kvm_age_gfn", "kvm_test_age_gfn", "kvm_age_rmap"])
    assert set(found) == {"kvm_age_gfn", "kvm_test_age_gfn"}  # not the _range_helper, __pfx_ or data symbols
    assert found["kvm_age_gfn"].type == "T"
    assert found["kvm_age_gfn"].module is None


def test_kallsyms_substring_and_module():
    found = parse_kallsyms(KALLSYMS, ["kvm_arch_test_clear_young"], "test_clear_young")
    assert set(found) == {"kvm_arch_test_clear_young", "kvm_tdp_mmu_test_clear_young"}
    assert found["kvm_arch_test_clear_young"].module == "kvm"


def test_kallsyms_skips_data_symbols():
    assert parse_kallsyms(KALLSYMS, ["kvm_age_gfn_data"]) == {}


def test_kallsyms_last_line_without_newline():
    found = parse_kallsyms("ffffffff81000000 T kvm_age_gfn", ["kvm_age_gfn"])
    assert "kvm_age_gfn" in found


@pytest.mark.parametrize("text,mode", [
    ("none [integrity] confidentiality\n", "integrity"),
    ("[none] integrity confidentiality\n", "none"),
    ("none integrity [confidentiality]\n", "confidentiality"),
    ("always [madvise] never\n", "madvise"),
    ("always madvise never\n", None),
])
def test_bracketed_choice(text, mode):
    assert parse_bracketed_choice(text) == mode


def test_kconfig():
    text = """#
# Automatically generated file; DO NOT EDIT.
CONFIG_KVM_MMU_LOCKLESS_AGING=y
CONFIG_KVM=m
# CONFIG_KPROBES is not set
CONFIG_LSM="landlock,lockdown,yama"
CONFIG_NR_CPUS=64
"""
    cfg = parse_kconfig(text)
    assert cfg["CONFIG_KVM_MMU_LOCKLESS_AGING"] == "y"
    assert cfg["CONFIG_KVM"] == "m"
    assert cfg["CONFIG_KPROBES"] == "n"
    assert cfg["CONFIG_LSM"] == "landlock,lockdown,yama"
    assert cfg["CONFIG_NR_CPUS"] == "64"
    assert "CONFIG_LRU_GEN" not in cfg


@pytest.mark.parametrize("release,version", [
    ("6.18.44-fc-v669", (6, 18, 44)),
    ("6.1.0-56-amd64", (6, 1, 0)),
    ("6.15-rc1", (6, 15, 0)),
    ("garbage", (0, 0, 0)),
])
def test_kernel_version(release, version):
    assert parse_kernel_version(release) == version


def test_swaps():
    text = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/vda2                               partition\t1048572\t\t1024\t\t-2
/swapfile                               file\t\t524284\t\t0\t\t-3
"""
    areas = parse_swaps(text)
    assert [a.name for a in areas] == ["/dev/vda2", "/swapfile"]
    assert areas[0].size_bytes == 1048572 * 1024 and areas[0].used_bytes == 1024 * 1024
    assert parse_swaps("Filename\tType\tSize\tUsed\tPriority\n") == []


def test_utsrelease():
    assert parse_utsrelease('#define UTS_RELEASE "6.1.0-56-amd64"\n') == "6.1.0-56-amd64"
    assert parse_utsrelease("") is None


@pytest.mark.parametrize("text,value", [("Y\n", True), ("N\n", False), ("1", True), ("0", False), ("auto", None)])
def test_module_bool(text, value):
    assert parse_module_bool(text) is value


def test_cpu_flags():
    text = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ept ept_ad\nbugs\t\t: spectre_v1\n"
    assert {"vmx", "ept_ad"} <= parse_cpu_flags(text)
    assert parse_cpu_flags("processor: 0\n") == set()


def test_pick_error_line_prefers_headers_then_clang_then_load():
    headers = "modprobe: FATAL: Module kheaders not found\nUnable to find kernel headers. Try rebuilding\n"
    assert "kernel headers" in pick_error_line(headers, "Failed to compile BPF module")
    clang = "/virtual/main.c:3:1: error: unknown type name 'foo'\n1 error generated.\n"
    assert "error: unknown type name" in pick_error_line(clang, "Failed to compile BPF module")
    load = "bpf: Failed to load program: Operation not permitted\n"
    assert pick_error_line(load, "Need super-user privileges") == load.strip()
    assert pick_error_line("", "Need super-user privileges\nmore") == "Need super-user privileges"
    assert pick_error_line("", "") == "unknown error"


# --- verdicts and predicates on a hand-built tree ---------------------------------------------

YES = Item(True, True)


def no(reason: str = "missing", remedy: str | None = "fix it") -> Item:
    return Item(False, None, reason, remedy)


def make_caps(*, module: str | None = "kvm_intel", tdp_mmu: Item = YES, ept: Item = YES, npt: Item = no(),
              device: Item = YES, vm_create: Item = YES, tracepoint: Item = YES, bcc_compile: Item = YES,
              hugetlb: dict[str, Item] | None = None, mglru: Item | None = None, nested_mode: Item | None = None,
              symbols: dict[str, Item] | None = None, tracepoints: dict[str, Item] | None = None) -> HostCaps:
    kvm = KvmCaps(Item(bool(module), module, None if module else "no module"), YES, device, Item(True, 12),
                  vm_create, Item(True, ["pages_4k"]), {"USER_MEMORY": Item(True, 1)})
    paging = PagingCaps(tdp_mmu, ept, npt, YES, no(), YES, nested_mode or no("no kvm.test_clear_young_nested"))
    memory = MemoryCaps(YES, no(), YES, hugetlb or {}, mglru or no("CONFIG_LRU_GEN is not set"), no(), YES, no())
    bpf = BpfCaps(YES, YES, tracepoint, Item(True, "0.26.0"), YES, bcc_compile, YES, Item(True, "none"),
                  no("CONFIG_KPROBES is not set"), no("EPERM"))
    return HostCaps(KernelInfo("6.18.0", (6, 18, 0), "x86_64", True, KernelConfig({}, None)), kvm, paging, memory, bpf,
                    symbols or {"kvm_age_gfn": YES}, tracepoints or {"kvm:kvm_age_hva": YES})


def test_mmu_verdict():
    assert make_caps().mmu is MmuMode.TDP
    assert make_caps(ept=no(), npt=YES).mmu is MmuMode.TDP
    assert make_caps(tdp_mmu=no("kvm.tdp_mmu=N")).mmu is MmuMode.SHADOW
    assert make_caps(ept=no(), npt=no()).mmu is MmuMode.SHADOW  # TDP MMU on paper, no EPT/NPT
    assert make_caps(module=None).mmu is MmuMode.NONE


def test_tdp_predicate_reason():
    assert make_caps().tdp
    shadow = make_caps(tdp_mmu=no("kvm.tdp_mmu=N")).tdp
    assert not shadow and "kvm.tdp_mmu=N" in shadow.reason and shadow.remedy
    assert "EPT nor NPT" in make_caps(ept=no(), npt=no()).tdp.reason


def test_kvm_usable_returns_first_failure():
    assert make_caps().kvm_usable
    denied = no("no read/write permission on /dev/kvm", "run as root")
    usable = make_caps(device=denied, vm_create=no("not tried")).kvm_usable
    assert usable is denied
    assert make_caps(vm_create=no("KVM_CREATE_VM failed")).kvm_usable.reason == "KVM_CREATE_VM failed"


def test_bpf_tracepoints_needs_attach_and_bcc_compile():
    assert make_caps().bpf_tracepoints
    assert make_caps(bcc_compile=no("no headers")).bpf_tracepoints.reason == "no headers"
    assert make_caps(tracepoint=no("EPERM")).bpf_tracepoints.reason == "EPERM"


def test_hugetlb_pages_lookup():
    caps = make_caps(hugetlb={"2M": Item(True, {"free": 4}), "1G": no("none reserved")})
    assert caps.hugetlb_pages("2M")
    assert caps.hugetlb_pages(2 << 20).value == {"free": 4}
    assert caps.hugetlb_pages("1G").reason == "none reserved"
    odd = caps.hugetlb_pages("16M")
    assert not odd and "16M" in odd.reason and "2M" in odd.remedy
    with pytest.raises(UsageError):
        caps.hugetlb_pages("huge")


def test_test_clear_young_verdict_names_the_series_and_its_switches():
    stock = make_caps().test_clear_young
    assert not stock and "lacks the test_clear_young series" in stock.reason
    assert "build-lab-kernel.sh --patches kernels/test-clear-young" in stock.remedy
    patched = make_caps(mglru=Item(True, "0x000f"), nested_mode=Item(True, "fixed"),
                        symbols={"kvm_arch_test_clear_young": Item(True, "vmlinux")},
                        tracepoints={"kvm:kvm_age_notifier": YES}).test_clear_young
    assert patched and patched.value == {"symbol": "kvm_arch_test_clear_young", "tracepoint": True,
                                         "lru_gen_cap": "on", "lru_gen_cap_bit": "0x0008", "nested_mode": "fixed"}
    off = make_caps(mglru=Item(True, "0x0007"), symbols={"kvm_arch_test_clear_young": Item(True, "vmlinux")},
                    tracepoints={"kvm:kvm_age_notifier": YES}).test_clear_young
    assert off.value["lru_gen_cap"] == "off" and off.value["nested_mode"] is None


def test_predicates_and_groups_carry_reasons():
    caps = make_caps()
    assert not caps.mglru and caps.mglru.reason == "CONFIG_LRU_GEN is not set"
    assert not caps.kprobes and not caps.fentry and not caps.page_idle and not caps.foreign_kdamond
    titles = [title for title, _ in caps.groups()]
    assert titles[0] == "KVM" and titles[1] == "MMU (tdp)"
    kvm_items = dict(caps.groups())["KVM"]
    assert "capabilities.USER_MEMORY" in kvm_items


def test_to_dict_is_json_and_keeps_the_verdict():
    caps = make_caps(tdp_mmu=no("kvm.tdp_mmu=N"))
    data = json.loads(json.dumps(caps.to_dict()))
    assert data["mmu"] == "shadow"
    assert data["paging"]["tdp_mmu"] == {"available": False, "value": None, "reason": "kvm.tdp_mmu=N",
                                         "remedy": "fix it", "source": None}
    assert data["predicates"]["tdp"]["available"] is False
    assert data["kvm"]["capabilities"]["USER_MEMORY"]["value"] == 1
    assert set(data) >= {"kernel", "kvm", "paging", "memory", "bpf", "symbols", "tracepoints", "notes"}


def test_tracepoint_annotations():
    items = {"kvmmmu:kvm_tdp_mmu_spte_changed": YES, "kvm:kvm_exit": YES, "kvm:kvm_age_hva": YES}
    shadow = annotate_tracepoints(items, "kvm_pvm", tdp_mmu=False)
    assert "TDP MMU" in shadow["kvmmmu:kvm_tdp_mmu_spte_changed"].reason
    assert "kvm_pvm" in shadow["kvm:kvm_exit"].reason
    assert shadow["kvm:kvm_age_hva"].reason is None
    assert all(i.available for i in shadow.values())
    vmx = annotate_tracepoints(items, "kvm_intel", tdp_mmu=True)
    assert all(i.reason is None for i in vmx.values())


def test_a_refused_kprobe_or_fentry_blames_lockdown_only_where_it_is_on():
    kprobe, fentry = refusal_remedies(ok("none"))
    assert "lockdown is none" in kprobe and "not through lockdown (none)" in fentry
    assert "lockdown or" not in fentry
    kprobe, fentry = refusal_remedies(ok("integrity"))
    assert "lockdown=integrity" in kprobe and "lockdown=integrity or an LSM" in fentry
    assert "mode unknown" in refusal_remedies(missing("cannot read /sys/kernel/security/lockdown"))[1]


def test_lockdown_is_none_on_a_kernel_without_the_lockdown_lsm(monkeypatch):
    """A lab kernel without securityfs's lockdown file and without the LSM has no lockdown, not an unknown one."""
    from kvmctl.probe import kernel

    monkeypatch.setattr(kernel, "read", lambda path: (None, "absent"))
    monkeypatch.setattr(kernel, "_lockdown_via_private_mount", lambda: None)
    item = kernel.probe_lockdown(KernelConfig({"CONFIG_KPROBES": "y"}, "/proc/config.gz"))
    assert item and item.value == "none" and "CONFIG_SECURITY_LOCKDOWN_LSM" in item.reason
    assert "lockdown" not in refusal_remedies(item)[1].replace("not through lockdown (none)", "")
    unknown = kernel.probe_lockdown(KernelConfig({}, None))  # no config either: say it is unknown
    assert not unknown and unknown.value == "unknown"
    lsm = kernel.probe_lockdown(KernelConfig({"CONFIG_SECURITY_LOCKDOWN_LSM": "y"}, "/proc/config.gz"))
    assert not lsm  # the LSM is there but its mode could not be read


def test_fentry_without_a_btf_entry_is_not_called_a_refusal():
    err = "Failed to load BPF program b'kfunc__kvm_age_gfn': No such file or directory"
    text = fentry_failure_remedy("kvm_age_gfn", err, "REFUSED")
    assert "no BTF entry for kvm_age_gfn" in text and "lockdown" not in text
    assert fentry_failure_remedy("kvm_age_gfn", "Operation not permitted", "REFUSED") == "REFUSED"


def test_lockless_aging_without_a_config_follows_the_kernel_version():
    from kvmctl.probe.kvm import _lockless_aging

    old = _lockless_aging(KernelConfig({}, None), (6, 1, 0))
    assert old.value is False and old.source == "kernel version" and "added in 6.15" in old.reason
    new = _lockless_aging(KernelConfig({}, None), (6, 18, 0))
    assert new.value == "unknown" and "likely on" in new.reason
    built = _lockless_aging(KernelConfig({"CONFIG_KVM": "y"}, "/proc/config.gz"), (6, 1, 0))
    assert built.value is False and "unknown to this kernel" in built.reason
