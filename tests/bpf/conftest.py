"""Real-probe tests: a VM in a child process, our tracer, and independent counts.

Markers (bpf, kvm, root) make tests/conftest.py skip with the host probe's
reason. Every test leaves no cgroup, no tracefs instance and no BPF program
behind.
"""

from __future__ import annotations

import os
import threading

import pytest

from kvmctl import cleanup
from kvmctl.cgroup import Memcg, kvmctl_children, own_memcg
from kvmctl.errors import KvmctlError
from kvmctl.trace.catalogue import make_plan, probe_kernel

@pytest.fixture(scope="session")
def own() -> Memcg:
    try:
        memcg = own_memcg()
    except KvmctlError as err:
        pytest.skip(f"no usable memory cgroup: {err.one_line()}")
    if not os.access(memcg.path, os.W_OK):
        pytest.skip(f"cannot create cgroups below {memcg.path}")
    return memcg


@pytest.fixture(scope="session")
def offer():
    return probe_kernel()


@pytest.fixture(scope="session")
def plan(offer):
    return make_plan(offer)


@pytest.fixture
def ager_tid() -> int:
    return threading.get_native_id()


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    failures = cleanup.run_all()
    assert failures == [], f"cleanup failed: {failures}"
    try:
        memcg = own_memcg()
    except KvmctlError:
        return
    mine = [n for n in kvmctl_children(memcg) if n.startswith(f"kvmctl-{os.getpid()}-")]
    assert mine == [], f"cgroups left below {memcg.rel}: {mine}"
