"""Fixtures of the host tests that make cgroups (tests/agers, tests/bpf): import them into a conftest.

``own`` is this process's memory cgroup, below which the tests create theirs
(skipped with the reason when that is impossible); ``no_cgroup_left_behind``
checks after every test that cleanup ran clean and no cgroup of ours remains.
"""

from __future__ import annotations

import os

import pytest

from kvmctl import cleanup
from kvmctl.cgroup import Memcg, kvmctl_children, own_memcg
from kvmctl.errors import KvmctlError


@pytest.fixture(scope="session")
def own() -> Memcg:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates memory cgroups below this process's memcg")
    try:
        memcg = own_memcg()
    except KvmctlError as err:
        pytest.skip(f"no usable memory cgroup: {err.one_line()}")
    if not os.access(memcg.path, os.W_OK):
        pytest.skip(f"cannot create cgroups below {memcg.path}")
    return memcg


@pytest.fixture(autouse=True)
def no_cgroup_left_behind():
    """After every test: cleanup ran clean and no kvmctl cgroup of ours remains."""
    yield
    failures = cleanup.run_all()
    assert failures == [], f"cleanup failed: {failures}"
    try:
        memcg = own_memcg()
    except KvmctlError:
        return
    mine = [n for n in kvmctl_children(memcg) if n.startswith(f"kvmctl-{os.getpid()}-")]
    assert mine == [], f"cgroups left below {memcg.rel}: {mine}"
