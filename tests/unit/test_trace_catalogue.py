"""Probe catalogue choices for kernels described by fake capability inputs."""

from __future__ import annotations

import dataclasses

import pytest

from kvmctl.probe.kernel import KernelConfig
from kvmctl.probe.kvm import kvm_module, probe_paging
from kvmctl.probe.tracing import parse_format_fields
from kvmctl.trace.catalogue import (
    MAX_FUNCS,
    KernelOffer,
    detect_mmu,
    make_plan,
    resolve_symbols,
)
from kvmctl.trace.records import FuncRole

ALL_TRACEPOINTS = {
    "kvm:kvm_age_hva": frozenset({"start", "end"}),
    "kvm:kvm_test_age_hva": frozenset({"hva"}),
    "kvm:kvm_unmap_hva_range": frozenset({"start", "end"}),
    "kvmmmu:kvm_mmu_set_spte": frozenset({"gfn", "spte", "sptep", "level", "r", "x", "u"}),
    "kvmmmu:kvm_mmu_get_page": frozenset({"mmu_valid_gen", "gfn", "role", "root_count", "unsync", "created"}),
    "kvmmmu:kvm_tdp_mmu_spte_changed": frozenset({"gfn", "old_spte", "new_spte", "level", "as_id"}),
    "lock:contention_begin": frozenset({"lock_addr", "flags"}),
    "lock:contention_end": frozenset({"lock_addr", "ret"}),
}

# The development host: PVM shadow paging, no kprobes.
PVM_HOST = KernelOffer(
    release="6.18.44", tracepoint_fields=ALL_TRACEPOINTS,
    symbols={"kvm_age_gfn": "kvm_age_gfn", "kvm_test_age_gfn": "kvm_test_age_gfn",
             "kvm_tdp_mmu_age_gfn_range": "kvm_tdp_mmu_age_gfn_range",
             "kvm_tdp_mmu_test_age_gfn": "kvm_tdp_mmu_test_age_gfn", "rmap-age": "kvm_rmap_age_gfn_range.isra.0"},
    btf=True, lockdown="confidentiality", kprobes=False, kprobes_reason="CONFIG_KPROBES is off",
    tdp_mmu=False, tdp_reason="kvm_pvm shadow paging, tdp_mmu=N", accessed_mask=None)

# The lab: Debian 6.1 under QEMU with SVM + NPT.
LAB_61 = dataclasses.replace(
    PVM_HOST, release="6.1.0-56-amd64", lockdown="none", kprobes=True, kprobes_reason="", tdp_mmu=True,
    tdp_reason="kvm_amd npt=Y, tdp_mmu=Y", accessed_mask=1 << 5,
    symbols={"kvm_age_gfn": "kvm_age_gfn", "kvm_test_age_gfn": "kvm_test_age_gfn",
             "kvm_tdp_mmu_age_gfn_range": "kvm_tdp_mmu_age_gfn_range",
             "kvm_tdp_mmu_test_age_gfn": "kvm_tdp_mmu_test_age_gfn", "rmap-age": "kvm_age_rmap",
             "rmap-test-age": "kvm_test_age_rmap"})


def test_development_host_uses_tracepoints_and_says_why_the_rest_is_missing():
    plan = make_plan(PVM_HOST)
    assert plan.chosen["aging.calls"] == "tracepoint:kvm:kvm_age_hva"
    assert plan.chosen["spte.mappings"] == "tracepoint:kvmmmu:kvm_mmu_set_spte"
    assert plan.chosen["contention.mmu_lock"] == "tracepoint:lock:contention_begin + tracepoint:lock:contention_end"
    assert plan.programs() == {"aging.c", "spte.c", "locks.c"}
    assert plan.functions == {}
    why = plan.not_observable["aging.bits_cleared"]
    assert "no TDP MMU on this host (kvm_pvm shadow paging, tdp_mmu=N)" in why
    assert "kprobes are unavailable" in why and "lockdown=confidentiality" in why
    for name in ("aging.latency", "aging.young", "aging.path", "aging.test_clear_young"):
        assert "CONFIG_KPROBES is off" in plan.not_observable[name]
    assert set(plan.chosen).isdisjoint(plan.not_observable)


def test_lab_kernel_gets_kprobes_bits_cleared_and_both_walkers():
    plan = make_plan(LAB_61)
    assert plan.chosen["aging.latency"] == "kprobe:kvm_age_gfn + kprobe:kvm_test_age_gfn"
    assert plan.chosen["aging.path"] == "kprobe:kvm_age_gfn + kprobe:kvm_tdp_mmu_age_gfn_range + kprobe:kvm_age_rmap"
    assert plan.chosen["aging.bits_cleared"] == "tracepoint:kvmmmu:kvm_tdp_mmu_spte_changed"
    assert plan.accessed_mask == 1 << 5
    assert plan.functions == {
        "kvm_age_gfn": FuncRole.OUTER_AGE, "kvm_test_age_gfn": FuncRole.OUTER_TEST,
        "kvm_tdp_mmu_age_gfn_range": FuncRole.TDP, "kvm_age_rmap": FuncRole.RMAP,
        "kvm_tdp_mmu_test_age_gfn": FuncRole.TDP, "kvm_test_age_rmap": FuncRole.RMAP}
    assert len(plan.functions) <= MAX_FUNCS
    assert plan.programs() == {"aging.c", "spte.c", "locks.c", "funcs.c"}
    assert "no function kvm_arch_test_clear_young" in plan.not_observable["aging.test_clear_young"]
    hook_only = {"aging.notifier_paths", "contention.behind_aging", "aging.request_latency"}
    for name in hook_only:
        assert "kvm:kvm_age_notifier does not exist" in plan.not_observable[name]
        assert "test_clear_young series" in plan.not_observable[name]
    assert set(plan.not_observable) == {"aging.test_clear_young", *hook_only}


NOTIFIER_FIELDS = frozenset({"start", "end", "young", "flags", "op", "path"})


def test_kernel_with_our_series_traces_every_request_by_path():
    offer = dataclasses.replace(LAB_61, tracepoint_fields={**ALL_TRACEPOINTS, "kvm:kvm_age_notifier": NOTIFIER_FIELDS,
                                                           "kvm:kvm_test_clear_young": frozenset({"start", "end",
                                                                                                  "flags"})},
                                symbols={**LAB_61.symbols, "test-clear-young": "kvm_arch_test_clear_young"})
    plan = make_plan(offer)
    assert plan.chosen["aging.notifier_paths"] == "tracepoint:kvm:kvm_age_notifier"
    # the tracepoint is preferred over a kprobe on the hook: it does not depend on inlining
    assert plan.chosen["aging.test_clear_young"] == "tracepoint:kvm:kvm_age_notifier"
    assert "kvm_arch_test_clear_young" not in plan.functions
    assert plan.points["contention.behind_aging"].program == "locks.c"
    assert plan.points["aging.request_latency"].program == "notifier.c"
    assert "notifier.c" in plan.programs()
    assert not plan.not_observable


def test_kernel_with_the_hook_but_no_tracepoint_probes_the_function():
    offer = dataclasses.replace(LAB_61, symbols={**LAB_61.symbols, "test-clear-young": "kvm_arch_test_clear_young"})
    plan = make_plan(offer)
    assert plan.chosen["aging.test_clear_young"] == "kprobe:kvm_arch_test_clear_young"
    assert plan.functions["kvm_arch_test_clear_young"] is FuncRole.OTHER


def test_debian_61_marks_its_inlined_rmap_walk_by_rmap_walk_init_level():
    # symbols of Debian's 6.1 kvm.ko: kvm_age_rmap / kvm_test_age_rmap are inlined into kvm_age_gfn
    names = {"kvm_age_gfn", "kvm_test_age_gfn", "kvm_tdp_mmu_age_gfn_range", "kvm_tdp_mmu_test_age_gfn",
             "rmap_walk_init_level", "slot_rmap_walk_next", "kvm_mmu_notifier_clear_young"}
    symbols = resolve_symbols(names)
    assert symbols["rmap-age"] == "rmap_walk_init_level" and "rmap-test-age" not in symbols
    plan = make_plan(dataclasses.replace(LAB_61, symbols=symbols))
    assert plan.functions["rmap_walk_init_level"] is FuncRole.RMAP


def test_inlined_rmap_walker_falls_back_to_the_two_function_path_probe():
    symbols = {k: v for k, v in LAB_61.symbols.items() if not k.startswith("rmap")}
    plan = make_plan(dataclasses.replace(LAB_61, symbols=symbols))
    assert plan.chosen["aging.path"] == "kprobe:kvm_age_gfn + kprobe:kvm_tdp_mmu_age_gfn_range"


def test_ept_without_ad_bits_has_no_accessed_bit_to_count():
    plan = make_plan(dataclasses.replace(LAB_61, accessed_mask=None))
    assert "aging.bits_cleared" not in plan.points
    assert "EPT A/D off" in plan.not_observable["aging.bits_cleared"]


def test_missing_tracepoint_or_field_is_named():
    fields = dict(ALL_TRACEPOINTS)
    del fields["kvmmmu:kvm_mmu_get_page"]
    fields["kvmmmu:kvm_mmu_set_spte"] = frozenset({"spte"})
    plan = make_plan(dataclasses.replace(PVM_HOST, tracepoint_fields=fields))
    assert plan.not_observable["spte.shadow_pages"] == "tracepoint kvmmmu:kvm_mmu_get_page does not exist in this kernel"
    assert plan.not_observable["spte.mappings"] == "tracepoint kvmmmu:kvm_mmu_set_spte lacks field(s) gfn, level"


def test_wanted_limits_the_plan():
    plan = make_plan(PVM_HOST, wanted={"aging.calls"})
    assert set(plan.chosen) == {"aging.calls"} and plan.not_observable == {}
    assert plan.programs() == {"aging.c"}


FORMAT = """name: contention_begin
ID: 400
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * lock_addr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:unsigned int flags;\toffset:16;\tsize:4;\tsigned:0;
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "%p (flags=%s)", REC->lock_addr
"""


def test_format_fields_exclude_common_ones():
    assert parse_format_fields(FORMAT) == {"lock_addr", "flags", "comm", "name"}


def test_symbols_resolve_exact_names_before_compiler_clones():
    names = {"kvm_age_gfn", "kvm_rmap_age_gfn_range.isra.0", "kvm_age_rmap", "kvm_test_age_gfn.cold",
             "kvm_test_age_gfn", "kvm_tdp_mmu_age_gfn_range.constprop.0", "unrelated"}
    got = resolve_symbols(names)
    assert got["kvm_age_gfn"] == "kvm_age_gfn"
    assert got["kvm_test_age_gfn"] == "kvm_test_age_gfn"
    assert got["rmap-age"] == "kvm_rmap_age_gfn_range.isra.0"  # the 6.13+ walker wins over kvm_age_rmap
    assert got["kvm_tdp_mmu_age_gfn_range"] == "kvm_tdp_mmu_age_gfn_range.constprop.0"
    assert "test-clear-young" not in got


@pytest.mark.parametrize(("params", "expected"), [
    ({"kvm": {"tdp_mmu": "N"}, "kvm_pvm": {}}, (False, "kvm_pvm shadow paging, tdp_mmu=N", None)),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_amd": {"npt": "Y"}}, (True, "kvm_amd npt=Y, tdp_mmu=Y", 1 << 5)),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y", "eptad": "Y"}}, (True, "kvm_intel ept=Y, tdp_mmu=Y", 1 << 8)),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y", "eptad": "N"}}, (True, "kvm_intel ept=Y, tdp_mmu=Y", None)),
    ({"kvm": {"tdp_mmu": "Y"}, "kvm_amd": {"npt": "N"}}, (False, "kvm_amd npt=N", None)),
    ({}, (False, "the kvm module is not loaded", None)),
])
def test_mmu_detection_from_module_parameters(tmp_path, params, expected):
    for module, values in params.items():
        (tmp_path / module / "parameters").mkdir(parents=True)
        for name, value in values.items():
            (tmp_path / module / "parameters" / name).write_text(value + "\n")
    paging = probe_paging(kvm_module(tmp_path), KernelConfig({}, None), (6, 18, 0), tmp_path)
    assert detect_mmu(kvm_module(tmp_path), paging) == expected
