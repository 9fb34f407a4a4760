"""CPU placement reaches the kernel: the VM child's vCPU threads carry the affinity asked for."""

from __future__ import annotations

import os

import pytest

from kvmctl.experiment.vmproc import VmProcess
from kvmctl.guest.machine import MachineSpec
from kvmctl.kvm import BackingKind
from kvmctl.placement import thread_affinities

pytestmark = [pytest.mark.kvm, pytest.mark.root]


def test_vcpu_threads_run_where_the_placement_says():
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"this process may use only CPU {allowed[0]}: no placement to tell apart from none")
    vm_cpus = frozenset(allowed[1:])
    proc = VmProcess()
    try:
        built = proc.build(MachineSpec(mem_bytes=16 << 20, vcpus=2, backing=BackingKind.ANON), None, cpus=vm_cpus)
        seen = thread_affinities(proc.pid)
        assert len(built.vcpu_tids) == 2
        for tid in built.vcpu_tids:
            assert seen[tid] == vm_cpus, f"vCPU thread {tid} may run on {sorted(seen[tid])}"
        assert proc.epoch("seq", write=True).touches == 16 << 20 >> 12
    finally:
        proc.close()
    assert os.sched_getaffinity(0) == set(allowed), "building a VM changed our own affinity"
