"""Every BPF program, in every variant the tracer compiles, passes this kernel's verifier.

The kprobe programs of funcs.c and spte.c's TDP variant attach only where
kprobes or the TDP MMU exist, so their tests skip on most hosts; loading them
(without attaching the kprobes) still checks that they compile and verify,
including the aging marker they share through ranges.h.
"""

from __future__ import annotations

import pytest

from kvmctl.trace.loader import load_program
from kvmctl.trace.tracer import MAX_RANGES

pytestmark = [pytest.mark.bpf, pytest.mark.root]

NR_PAGES = 8192
VARIANTS = {
    "aging": ("aging.c", [f"-DNR_PAGES={NR_PAGES}", "-DBUCKET_NS=100000000ULL", "-DNR_BUCKETS=64",
                          "-DMAX_PAGES_PER_EVENT=512"], 3),
    "locks": ("locks.c", [], 2),
    "funcs": ("funcs.c", [], 3),
    "spte": ("spte.c", [f"-DNR_PAGES={NR_PAGES}"], 2),
    "spte-tdp": ("spte.c", [f"-DNR_PAGES={NR_PAGES}", "-DWITH_TDP_SPTE_CHANGED", "-DACCESSED_MASK=0x20ULL"], 6),
    "spte-tdp-harvest": ("spte.c", [f"-DNR_PAGES={NR_PAGES}", "-DWITH_TDP_SPTE_CHANGED", "-DACCESSED_MASK=0x20ULL",
                                    "-DWITH_HARVEST", "-DMAX_PAGES_PER_EVENT=512"], 6),
}
NR_FUNCS = 8  # enter_<i>/leave_<i> pairs in funcs.c


# Variants that attach kvm:kvm_age_notifier, which only kernels with the test_clear_young series have.
HOOK_VARIANTS = {
    "notifier": ("notifier.c", [], 1),
    "aging-notifier": ("aging.c", [*VARIANTS["aging"][1], "-DWITH_AGE_NOTIFIER"], 4),
    "locks-behind-aging": ("locks.c", ["-DAGING_SECTIONS"], 5),
    "notifier-latency": ("notifier.c", ["-DWITH_REQUEST_BEGIN"], 4),
    "spte-tdp-hook": ("spte.c", [*VARIANTS["spte-tdp-harvest"][1], "-DWITH_TCY_BEGIN"], 7),
    "funcs-hook": ("funcs.c", ["-DWITH_TCY_BEGIN"], 4),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_program_loads_and_attaches_its_tracepoints(variant):
    _load_and_attach(*VARIANTS[variant])


@pytest.mark.tcy
@pytest.mark.parametrize("variant", list(HOOK_VARIANTS))
def test_hook_program_loads_and_attaches_its_tracepoints(variant):
    _load_and_attach(*HOOK_VARIANTS[variant])


def _load_and_attach(name: str, flags: list[str], tracepoints: int) -> None:
    prog = load_program(name, [f"-DMAX_RANGES={MAX_RANGES}", *flags])
    bpf = prog.bpf
    try:
        assert bpf.num_open_tracepoints() == tracepoints
        if name == "funcs.c":
            for i in range(NR_FUNCS):
                for fn in (f"enter_{i}", f"leave_{i}"):
                    assert bpf.load_func(fn.encode(), bpf.KPROBE).fd >= 0, fn
    finally:
        bpf.cleanup()
    assert bpf.num_open_tracepoints() == 0
