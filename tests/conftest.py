"""Skip tests by marker, with the capability probe's own reason.

Markers (declared in pyproject.toml) say what a test needs; a test whose need
the host cannot meet is skipped with the one-line reason and fix from
:func:`kvmctl.probe.probe_host`, so a skip always explains itself. The probe runs
at most once per session, and only when a marked test is about to run.
"""

from __future__ import annotations

import os
from typing import Callable

import pytest

from kvmctl.probe import HostCaps, Item, probe_host


def _kprobes_or_fentry(caps: HostCaps) -> Item:
    if caps.kprobes:
        return caps.kprobes
    if caps.fentry:
        return caps.fentry
    return Item(False, reason=f"kprobe: {caps.kprobes.reason}; fentry: {caps.fentry.reason}",
                remedy=caps.kprobes.remedy)


# marker -> the probe item that must be available
_NEEDS: dict[str, Callable[[HostCaps], Item]] = {
    "kvm": lambda caps: caps.kvm_usable,
    "bpf": lambda caps: caps.bpf_tracepoints,
    "tdp": lambda caps: caps.tdp,
    "kprobes": _kprobes_or_fentry,
    "mglru": lambda caps: caps.mglru,
    "tcy": lambda caps: caps.test_clear_young,
}


def lab_status() -> tuple[bool, str]:
    """Whether this host can run `kvmctl lab`, and if not, why (kvmctl.lab.prereqs.lab_available)."""
    from kvmctl.lab.prereqs import lab_available

    ok, why = lab_available()
    return bool(ok), why


def _skip_text(marker: str, item: Item) -> str:
    text = f"needs {marker}: {item.reason or 'not available on this host'}"
    return f"{text} (fix: {item.remedy})" if item.remedy else text


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in {m.name for m in item.iter_markers()}:
        if marker == "root" and os.geteuid() != 0:
            pytest.skip("needs root: run the suite as root (sudo)")
        elif marker == "lab":
            ok, why = lab_status()
            if not ok:
                pytest.skip(f"needs lab: {why}")
        elif marker in _NEEDS:
            need = _NEEDS[marker](probe_host())
            if not need:
                pytest.skip(_skip_text(marker, need))


def pytest_report_header(config: pytest.Config) -> str:
    caps = probe_host()
    return (f"kvmctl host: kernel {caps.kernel.release}, KVM {caps.kvm.module.value or 'none'}, "
            f"MMU {caps.mmu.value}, kvm usable: {bool(caps.kvm_usable)}, "
            f"BPF tracepoints: {bool(caps.bpf_tracepoints)}, root: {caps.kernel.root}")


@pytest.fixture(scope="session")
def host_caps() -> HostCaps:
    """The host probe, for tests that branch on what the host offers."""
    return probe_host()
