"""Tracer lifecycle: one window, idempotent stop, nothing left attached."""

from __future__ import annotations

import os
import time

import pytest

from kvmctl import cleanup
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.trace.catalogue import make_plan
from kvmctl.kvm import Memslot
from kvmctl.trace.records import TraceTarget
from kvmctl.trace.tracer import Tracer

pytestmark = [pytest.mark.bpf, pytest.mark.root]

# No VM needed: a range no aging event can hit.
TARGET = TraceTarget(vm_tgid=os.getpid(), memslots=[Memslot.at(0, 0, 1 << 12, 1 << 12)])


def bpf_fds() -> list[str]:
    """Our open perf-event, BPF program and BPF map fds."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link in ("anon_inode:[perf_event]", "anon_inode:bpf-prog", "anon_inode:bpf-map"):
            out.append(link)
    return out


def test_window_is_monotonic_and_stop_detaches_everything(offer):
    plan = make_plan(offer, wanted={"aging.calls", "contention.locks"})
    before = bpf_fds()
    tracer = Tracer(plan, TARGET)
    with pytest.raises(UsageError):
        tracer.collect()
    t0 = time.monotonic_ns()
    window = tracer.start()
    assert t0 < window.start_ns <= time.monotonic_ns() and window.end_ns is None
    assert len(bpf_fds()) > len(before)
    assert tracer.snapshot().window.end_ns is None
    tracer.stop()
    tracer.stop()
    assert bpf_fds() == before
    result = tracer.collect()
    assert result is tracer.collect()
    assert window.start_ns < result.window.end_ns <= time.monotonic_ns()
    # nothing maps hva 4096: the range filter let no aging event through (records outlive the maps)
    assert sum(c.calls for row in result.aging.by_kind_class.values() for c in row.values()) == 0
    with pytest.raises(UsageError):
        tracer.snapshot()
    with pytest.raises(UsageError):
        tracer.start()


def test_cleanup_stack_detaches_a_running_tracer(offer):
    plan = make_plan(offer, wanted={"aging.calls"})
    before = bpf_fds()
    tracer = Tracer(plan, TARGET)
    tracer.start()
    assert "detach kvmctl BPF programs" in cleanup.pending()
    assert cleanup.run_all() == []  # what the CLI does on Ctrl-C and on errors
    assert bpf_fds() == before
    assert not tracer.running
    with pytest.raises(KvmctlError):
        tracer.collect()  # detached before its maps were read: nothing to pretend
    tracer.stop()
