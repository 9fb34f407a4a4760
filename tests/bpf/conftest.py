"""Real-probe tests: a VM in a child process, our tracer, and independent counts.

Markers (bpf, kvm, root) make tests/conftest.py skip with the host probe's
reason. Every test leaves no cgroup, no tracefs instance and no BPF program
behind.
"""

from __future__ import annotations

import threading

import pytest
from tests.helpers.cgroups import no_cgroup_left_behind, own  # noqa: F401 - fixtures, used by name

from kvmctl.trace.catalogue import kernel_offer, make_plan


@pytest.fixture(scope="session")
def offer():
    return kernel_offer()


@pytest.fixture(scope="session")
def plan(offer):
    return make_plan(offer)


@pytest.fixture
def ager_tid() -> int:
    return threading.get_native_id()
